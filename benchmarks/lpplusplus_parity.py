"""Parity of the benchmark's LP++ solver (benchmarks/methods/classifiers.py, ``lpplusplus_fit``) with the official
code (github FereshteShakeri/FewShot-CLIP-Strong-Baseline, ``methods/linear_probe_p2.py``).

The official repository is not part of this project: give the path of a checkout (read, never copied). Both sides
get the same random normalised "image features" and class text embeddings and the same seed (the only random
draw is ``nn.Linear``'s default bias initialisation, made right after seeding on both sides); the official class
runs unmodified on CPU, with four adaptations made from outside: its ``nn.Linear`` is created just after
``torch.manual_seed(seed)``, ``.cuda()`` is a no-op, the "CLIP model" returns the given features as its image
encoding, and its fp16 one-hot (exact 0/1 values) is cast to fp32 so that it can multiply the fp32 features.

    python -m benchmarks.lpplusplus_parity --reference /path/to/FewShot-CLIP-Strong-Baseline

prints the max abs difference of the learned weights, bias, alpha and test logits, the chosen epochs and the test
accuracy of both.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys
import types
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.methods.classifiers import lpplusplus_fit


def synthetic(classes: int, shots: int, val: int, test: int, dim: int, seed: int):
    """Class-structured random unit features (means + noise) and unit text embeddings near the class means."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)

    def draw(per_class: int):
        y = torch.arange(classes).repeat_interleave(per_class)
        return F.normalize(means[y] + 0.08 * torch.randn(len(y), dim, generator=g) * dim ** 0.5 / 10, dim=-1), y

    text = F.normalize(means + 0.1 * torch.randn(classes, dim, generator=g) * dim ** 0.5 / 10, dim=-1)
    return draw(shots), draw(val), draw(test), text


def reference(checkout: Path, train, val, test, text, shots: int, epochs: int, seed: int) -> dict:
    """Run the official ``LinearProbe_P2.forward`` and capture its final state (its locals at return)."""
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU: the official code calls .cuda() throughout
    nn.Module.cuda = lambda self, *a, **k: self
    package = types.ModuleType("methods")  # its methods/__init__ imports every method (CLIP, Dassl...): skip it
    package.__path__ = [str(checkout / "methods")]
    sys.modules["methods"] = package
    utils = importlib.import_module("methods.utils")
    one_hot = utils.get_one_hot
    utils.get_one_hot = lambda y, num_classes: one_hot(y, num_classes).float()
    lp2 = importlib.import_module("methods.linear_probe_p2")

    class Features(nn.Module):  # the "CLIP model": the loader already yields features
        dtype = torch.float32

        def encode_image(self, x):
            return x.clone()

    loader = lambda xy: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*xy), batch_size=256)
    method = lp2.LinearProbe_P2({"train_epoch": epochs, "shots": shots, "dataset": "random", "output_dir": "/tmp"})
    captured = {}

    def grab(frame, event, arg):
        if event == "return" and frame.f_code is lp2.LinearProbe_P2.forward.__code__:
            captured.update(frame.f_locals)

    linear = nn.Linear

    def seeded_linear(*a, **k):  # its bias is the one random draw: from the seed, as on our side
        torch.manual_seed(seed)
        return linear(*a, **k)

    nn.Linear = seeded_linear
    sys.setprofile(grab)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            _, acc = method(loader(train), loader(val), test[0], test[1], text.T.contiguous(), Features(), None)
    finally:
        sys.setprofile(None)
        nn.Linear = linear
    c = captured
    return {"weight": c["classifier"].weight.detach(), "bias": c["classifier"].bias.detach(),
            "alpha": c["alpha_vec"].detach(), "test_logits": c["logits_test"].detach(), "epoch": c["best_epoch"],
            "test_accuracy": acc / 100.0, "lr_w": c["lr_temp"], "lr_alpha": c["self"].lr_alpha,
            "init_alpha": float(c["final_init_alpha_mean"])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="checkout of FewShot-CLIP-Strong-Baseline")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    train, val, test, text = synthetic(args.classes, args.shots, args.shots, 40, args.dim, args.seed)
    ref = reference(args.reference, train, val, test, text, args.shots, args.epochs, args.seed)
    ours = lpplusplus_fit(*train, *val, text, args.epochs, args.seed)
    # the official code keeps the test logits of its best epoch
    logits = test[0] @ ours["weight"].T + ours["bias"] + ours["alpha"] * (test[0] @ text.T)
    report = {
        "epoch (ours, official)": (ours["epoch"], ref["epoch"]),
        "test accuracy (ours, official)": (float((logits.argmax(1) == test[1]).float().mean()), ref["test_accuracy"]),
        "max abs diff test logits": float((logits - ref["test_logits"]).abs().max()),
        "max abs test logit": float(ref["test_logits"].abs().max()),
    }
    for k in ("lr_w", "lr_alpha", "init_alpha"):
        report[f"{k} (ours, official)"] = (float(ours[k]), float(ref[k]))
    for k in ("weight", "bias", "alpha"):  # the official classifier at return is the last step's
        report[f"max abs diff final {k}"] = float((ours[f"final_{k}"] - ref[k]).abs().max())
        report[f"max abs final {k}"] = float(ref[k].abs().max())
    for k, v in report.items():
        print(f"{k}: {v}")
    return report


if __name__ == "__main__":
    main()
