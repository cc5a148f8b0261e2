"""Parity of the benchmark's CLIP-Adapter model (benchmarks/methods/classifiers.py, ``CLIPAdapter._logits``) with the
official code (github gaopengcuhk/CLIP-Adapter, ``clip_adapter.py``: ``Adapter`` and ``CustomCLIP.forward``).

The official repository is not part of this project: give the path of a checkout (read, never copied). Its module
imports Dassl and OpenAI's ``clip`` package at the top; neither is needed for the model, so both are stubbed from
outside (empty registries and classes), and ``CustomCLIP.forward`` runs unmodified on a stand-in ``self`` whose
image encoder returns the given (raw, unnormalised) features, whose text encoder returns the given class text and
whose logit scale is log(100) (OpenAI CLIP's value, rounded as the benchmark's constant). The adapter weights are
ours, copied into the official ``Adapter``. The official forward fixes the residual ratio at 0.2, so that is the
ratio compared. The benchmark feeds its adapter L2-normalised class tokens, the official code raw ones; the adapter
(no biases, ReLU) is positively homogeneous, so the logits must agree all the same, and the comparison checks it.

    python -m benchmarks.clip_adapter_parity --reference /path/to/CLIP-Adapter

prints the max abs difference of the logits, of the cross-entropy loss and of its gradients for both adapter layers
(and, as the check that can fail, the logits at another ratio).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import torch
from torch.nn import functional as F

from benchmarks.methods.classifiers import CLIPAdapter


def _stub_imports() -> None:
    """Dassl and OpenAI clip, as far as clip_adapter.py touches them at import time."""
    class Registry:
        def register(self, *args, **kwargs):
            return lambda cls: cls

    modules = {
        "dassl": {}, "dassl.engine": {"TRAINER_REGISTRY": Registry(), "TrainerX": object},
        "dassl.metrics": {"compute_accuracy": None},
        "dassl.utils": {"load_pretrained_weights": None, "load_checkpoint": None},
        "dassl.optim": {"build_optimizer": None, "build_lr_scheduler": None},
        "clip": {"clip": types.SimpleNamespace()}, "clip.simple_tokenizer": {"SimpleTokenizer": lambda: None},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


def load_reference(checkout: Path):
    _stub_imports()
    spec = importlib.util.spec_from_file_location("official_clip_adapter", checkout / "clip_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(checkout: Path, dim: int = 1024, n: int = 48, classes: int = 3, seed: int = 0) -> dict:
    official = load_reference(checkout)
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, dim, generator=g) * 3.0 + 0.5  # raw class tokens: not unit length
    text = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    labels = torch.randint(0, classes, (n,), generator=g)

    ours = object.__new__(CLIPAdapter)  # only _logits is exercised: no backbone needed
    ours.text = text
    our_mlp = ours._adapter(dim, seed)
    their_adapter = official.Adapter(dim, 4)
    their_adapter.fc.load_state_dict(our_mlp.state_dict())  # same layout: their fc.0 / fc.2 are our 0 / 2
    stand_in = types.SimpleNamespace(
        image_encoder=lambda image: image, adapter=their_adapter, text_encoder=lambda: text,
        logit_scale=torch.tensor(math.log(100.0)), dtype=torch.float32)

    our_logits = ours._logits(F.normalize(raw, dim=-1), our_mlp, 0.2)
    their_logits = official.CustomCLIP.forward(stand_in, raw)
    our_loss, their_loss = F.cross_entropy(our_logits, labels), F.cross_entropy(their_logits, labels)
    return {
        "dim": dim, "images": n, "classes": classes, "seed": seed, "ratio": 0.2,
        "max_abs_logits": float((our_logits - their_logits).abs().max()),
        "max_logit": float(their_logits.abs().max()),
        "abs_loss": float((our_loss - their_loss).abs()),
        "loss": float(their_loss),
        # the same features into both adapters (the official code would see raw ones; the gradients then differ by
        # the chain rule through the normalisation, not by the model)
        "max_abs_grad_per_layer": _same_input_grads(official, our_mlp, ours, raw, labels, text),
        # that the comparison can fail: ours at ratio 0.3 against the official 0.2
        "max_abs_logits_at_ratio_0_3": float((ours._logits(F.normalize(raw, dim=-1), our_mlp, 0.3)
                                              - their_logits).abs().max()),
    }


def _same_input_grads(official, our_mlp, ours, raw, labels, text) -> list[float]:
    """Gradients of both adapters when both are fed the same (normalised) features: must agree to rounding."""
    unit = F.normalize(raw, dim=-1)
    adapter = official.Adapter(raw.shape[1], 4)
    adapter.fc.load_state_dict(our_mlp.state_dict())
    stand_in = types.SimpleNamespace(image_encoder=lambda image: image, adapter=adapter, text_encoder=lambda: text,
                                     logit_scale=torch.tensor(math.log(100.0)), dtype=torch.float32)
    ours_g = torch.autograd.grad(F.cross_entropy(ours._logits(unit, our_mlp, 0.2), labels), list(our_mlp.parameters()))
    theirs_g = torch.autograd.grad(F.cross_entropy(official.CustomCLIP.forward(stand_in, unit), labels),
                                   list(adapter.parameters()))
    return [float((a - b).abs().max()) for a, b in zip(ours_g, theirs_g)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="checkout of gaopengcuhk/CLIP-Adapter")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = compare(Path(args.reference), seed=args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
