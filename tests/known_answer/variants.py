"""Deliberately broken variants of UltraAD for the known-answer test; each must FAIL the floors.

They are made here, by wrapping or patching the library for the duration of a ``with`` block (nothing of this is
a product option, except ``use_memory`` / ``use_fusion``, the paper's own ablation switches):

* ``map_transposed`` / ``map_flipped``: the heatmap is drawn in the wrong place against the mask (the maps that
  evaluation scores are transposed / flipped upside down), as a geometry bug in padding or resizing would do;
* ``seg_loss_detached``: the Dice + Focal term does not reach the head (its input is detached);
* ``cls_loss_detached``: the cross-entropy does not reach the head;
* ``no_memory`` / ``no_fusion``: the memory bank / the patch-language fusion switched off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from monai_ultraad import engine, losses
from monai_ultraad.networks.ultraad import UltraADOutput

#: variant -> model keyword arguments (the ablation switches that exist)
MODEL_SWITCHES = {"no_memory": {"use_memory": False}, "no_fusion": {"use_fusion": False}}
PATCHED = ("map_transposed", "map_flipped", "seg_loss_detached", "cls_loss_detached")
VARIANTS = PATCHED + tuple(MODEL_SWITCHES)


@contextlib.contextmanager
def broken(variant: str, monkeypatch) -> Iterator[dict]:
    """Apply ``variant`` with pytest's ``monkeypatch`` (undone by the caller's ``monkeypatch.undo()`` or at the
    end of the test); yields the model keyword arguments the variant needs."""
    if variant in ("map_transposed", "map_flipped"):
        run_head = engine.run_head
        move = (lambda m: np.ascontiguousarray(m.T)) if variant == "map_transposed" else (lambda m: m[::-1].copy())

        def misplaced(*args, **kwargs):
            out, maps = run_head(*args, **kwargs)
            return out, [move(m) for m in maps]

        monkeypatch.setattr(engine, "run_head", misplaced)
    elif variant in ("seg_loss_detached", "cls_loss_detached"):
        forward = losses.UltraADLoss.forward

        def detached(self, output: UltraADOutput, masks, labels):
            if variant == "seg_loss_detached":
                output = UltraADOutput(output.anomaly_map, output.class_logits, output.anomaly_score,
                                       output.layer_logits.detach().requires_grad_(False))
            else:
                output = UltraADOutput(output.anomaly_map, output.class_logits.detach(), output.anomaly_score,
                                       output.layer_logits)
            parts = forward(self, output, masks, labels)
            if not parts["loss"].requires_grad:  # nothing reaches the head: a zero loss that still backpropagates
                parts["loss"] = parts["loss"] + 0.0 * output.layer_logits.sum()
            return parts

        monkeypatch.setattr(losses.UltraADLoss, "forward", detached)
    elif variant not in MODEL_SWITCHES:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    yield dict(MODEL_SWITCHES.get(variant, {}))
