"""Export a trained UltraAD for deployment without Python model code: TorchScript (trace) or torch.export.

The exported program takes a (B, 3, S, S) CLIP-normalised image batch and returns
``(anomaly_map (B,1,S,S), class_probs (B,C), anomaly_score (B,))``. The few-shot memory, the learned prompts and the
frozen backbone are baked in. :func:`export_torchscript` checks the exported outputs against the eager model before
writing, so a file on disk is always one whose outputs were verified.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from monai_ultraad.io_utils import atomic_write_bytes
from monai_ultraad.workflows.inference import UltraADTensorNet


def _example(net: UltraADTensorNet, batch: int = 2) -> torch.Tensor:
    size = net.model.image_size
    param = next(net.model.parameters())
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(param.device)


def check_outputs(reference: tuple, exported: tuple, atol: float = 1e-4) -> float:
    """Largest absolute difference between two output tuples; raises if above ``atol``."""
    worst = max(float((a - b).abs().max()) for a, b in zip(reference, exported))
    if worst > atol:
        raise RuntimeError(f"exported model differs from the eager model by {worst:.2e} (> {atol:.0e})")
    return worst


def export_torchscript(net: UltraADTensorNet, path: str | os.PathLike, atol: float = 1e-4) -> Path:
    """Trace ``net`` to TorchScript, verify it on fresh inputs (another batch size too) and save it atomically."""
    net = net.eval()
    example = _example(net, 2)
    with torch.no_grad():
        traced = torch.jit.trace(net, example, check_trace=False)
        for batch in (1, 3):
            probe = _example(net, batch) * 0.5
            check_outputs(net(probe), traced(probe), atol)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def export_program(net: UltraADTensorNet, path: str | os.PathLike, atol: float = 1e-4) -> Path:
    """``torch.export`` the network (dynamic batch), verify it and save the ExportedProgram (``.pt2``)."""
    net = net.eval()
    example = _example(net, 2)
    batch = torch.export.Dim("batch", min=1, max=256)
    with torch.no_grad():
        program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
        probe = _example(net, 3) * 0.5
        check_outputs(net(probe), program.module()(probe), atol)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


__all__ = ["check_outputs", "export_program", "export_torchscript"]
