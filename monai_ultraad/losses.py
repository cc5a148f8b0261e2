"""UltraAD's multitask loss: Dice + Focal on the anomaly maps (MONAI's), cross-entropy on the classes (Sec. 2.4)."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss, FocalLoss
from torch import nn
from torch.nn import functional as F

from monai_ultraad.networks.ultraad import UltraADOutput


class UltraADLoss(nn.Module):
    """``seg_weight * mean_layers(Dice + Focal) + cls_weight * CE``, equally weighted by default as in the paper.

    The segmentation terms are applied to every tapped layer's 2-class (normal / abnormal) patch logits, upsampled to
    the mask's resolution, as April-GAN and UltraAD do; the layer losses are averaged.

    Args:
        seg_weight: weight of the Dice + Focal term.
        cls_weight: weight of the cross-entropy term (0 gives the "without multitask" ablation).
        focal_gamma: focusing parameter of the focal loss.
    """

    def __init__(self, seg_weight: float = 1.0, cls_weight: float = 1.0, focal_gamma: float = 2.0) -> None:
        super().__init__()
        self.seg_weight, self.cls_weight = seg_weight, cls_weight
        self.dice = DiceLoss(to_onehot_y=True, softmax=True)
        self.focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=focal_gamma)

    def forward(self, output: UltraADOutput, masks: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the total loss and its parts.

        Args:
            output: the model output for the batch.
            masks: (B, 1, H, W) binary lesion masks (normal images: all zero).
            labels: (B,) class indices.
        """
        if masks.ndim != 4 or masks.shape[1] != 1:
            raise ValueError(f"masks must have shape (B, 1, H, W), got {tuple(masks.shape)}")
        masks = masks.to(output.layer_logits.device, torch.float32)
        size = masks.shape[-2:]
        seg = output.layer_logits.new_zeros(())
        n_layers = output.layer_logits.shape[1]
        for layer in range(n_layers):
            logits = F.interpolate(output.layer_logits[:, layer], size=size, mode="bilinear", align_corners=False)
            seg = seg + self.dice(logits, masks) + self.focal(logits, masks)
        seg = seg / n_layers
        ce = F.cross_entropy(output.class_logits, labels.to(output.class_logits.device).long())
        total = self.seg_weight * seg + self.cls_weight * ce
        return {"loss": total, "seg_loss": seg.detach(), "cls_loss": ce.detach()}
