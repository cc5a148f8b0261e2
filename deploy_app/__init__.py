"""UltraAD MONAI Deploy application (run as ``python deploy_app ...``; see __main__.py)."""
