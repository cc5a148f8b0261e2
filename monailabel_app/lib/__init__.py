"""UltraAD MONAI Label app library: configs, infer/train tasks, next-image strategy, ultrasound datastores."""
