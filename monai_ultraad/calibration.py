"""Post-hoc calibration of the class probabilities: a temperature and a class bias, fitted on VALIDATION images.

``calibrated_logits = logits / T + b``. The fit minimises the class-balanced negative log-likelihood (each class
weighs the same, whatever the validation class counts), so the bias also removes a constant class tilt left after
training; the temperature fixes over- or under-confidence. Two things the paper does not do, chosen because a
few-shot head trained to a near-zero training loss is over-confident on new images (measured on the known-answer
set: ECE and balanced accuracy before/after in README), and because the validation images are the only data
besides the shots that the protocol lets training see. The values live in the model's ``calibration`` buffers, so
every checkpoint carries them and every surface (CLI, bundle, deploy app, MONAI Label) applies them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LogitCalibration(nn.Module):
    """``logits / temperature + bias``; the identity until :func:`fit_calibration` sets it."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("bias", torch.zeros(num_classes))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature.to(logits.dtype) + self.bias.to(logits.dtype)

    @torch.no_grad()
    def reset(self) -> None:
        self.temperature.fill_(1.0)
        self.bias.zero_()

    @property
    def is_identity(self) -> bool:
        return bool(self.temperature == 1.0) and not bool(self.bias.abs().any())


def fit_calibration(
    logits: torch.Tensor, labels: torch.Tensor, ridge: float = 1e-3
) -> tuple[float, torch.Tensor]:
    """Temperature T and (C,) bias b minimising the class-balanced NLL of ``logits / T + b`` against ``labels``.

    ``logits`` are the UNcalibrated (N, C) validation logits. Classes absent from the validation set keep bias 0
    relative to the others (the ridge holds them there). Returns (T, b) with b centred (softmax-invariant).
    """
    logits, labels = logits.detach().float(), labels.detach().long()
    n_classes = logits.shape[1]
    counts = torch.bincount(labels, minlength=n_classes).float()
    weight = torch.where(counts > 0, 1.0 / counts.clamp(min=1.0), torch.zeros_like(counts))
    params = torch.zeros(1 + n_classes, requires_grad=True)  # log T, b
    optimizer = torch.optim.LBFGS([params], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        scaled = logits / params[0].clamp(-5.0, 5.0).exp() + params[1:]
        loss = F.cross_entropy(scaled, labels, weight=weight) + ridge * params[1:].square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = params.detach()
    if not torch.isfinite(fitted).all():
        return 1.0, torch.zeros(n_classes)
    bias = fitted[1:] - fitted[1:].mean()
    return float(fitted[0].clamp(-5.0, 5.0).exp()), bias
