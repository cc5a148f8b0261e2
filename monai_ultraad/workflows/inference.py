"""Tensor-output wrapper of UltraAD for export and the bundle's ``verify_net_in_out``; engine output pickers.

Inference itself is :class:`monai_ultraad.inference.Predictor` (the bundle's ``inferring`` calls it through
:class:`monai_ultraad.prediction_files.PredictFiles`).
"""

from __future__ import annotations

import torch


class UltraADTensorNet(torch.nn.Module):
    """UltraAD with plain tensor outputs, for export (TorchScript / torch.export) and MONAI's ``verify_net_in_out``.

    Args:
        model: a trained UltraAD.
        outputs: ``"all"`` returns ``(anomaly_map (B,1,S,S), class_probs (B,C), anomaly_score (B,))``;
            ``"anomaly_map"`` returns only the map, the first output declared in the bundle's metadata.
    """

    def __init__(self, model: torch.nn.Module, outputs: str = "all") -> None:
        super().__init__()
        if outputs not in ("all", "anomaly_map"):
            raise ValueError(f"outputs must be 'all' or 'anomaly_map', not {outputs!r}")
        self.model = model.eval()
        self.outputs = outputs

    def forward(self, images: torch.Tensor):
        out = self.model(images)
        if self.outputs == "anomaly_map":
            return out.anomaly_map
        return out.anomaly_map, out.class_probs, out.anomaly_score


__all__ = ["UltraADTensorNet"]
