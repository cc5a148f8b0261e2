"""Parity of the benchmark's Tip-Adapter / Tip-Adapter-F (benchmarks/methods/classifiers.py, ``TipAdapter``,
``TipAdapterF``) with the official code, github gaopengcuhk/Tip-Adapter (``main.py``, ``utils.py``).

The official repository is not part of this project: the reference step imports its ``main.py`` and ``utils.py``
from a checkout outside the project (read, never copied) and runs, unmodified, ``build_cache_model``,
``pre_load_features``, ``run_tip_adapter``, ``search_hp``, ``cls_acc`` and ``run_tip_adapter_F`` (its training loop)
on CPU in float32 with these adaptations made from outside: ``.cuda()`` is a no-op; the names ``main.py`` imports
from its ``datasets`` and ``clip`` packages (dataset builders, tokenizer) are stubbed, as no image is read; the "CLIP
model" returns the given (raw, unnormalised) features as its image encoding, with dtype float32 (official: float16
on the GPU); its float16 one-hot cache values (exact 0/1) are cast to float32; one "augment epoch" (the cache
averages identical un-augmented features, as ours uses); the Tip-Adapter-F loader yields the batches in the order
our ``_finetune`` draws them (``torch.randperm`` from the seed, once per epoch) instead of the DataLoader's own
shuffle; ``utils.cls_acc``'s ``float()`` of a one-element array, which NumPy >= 2 refuses, gets the element. Both sides choose the Tip-Adapter-F epoch on the same images: ours on validation, the official code on its
"test" loader, which is given our validation images.

    # 1. random raw features (3 classes), unit class text, labels; seed
    python -m benchmarks.tip_adapter_parity make --out /tmp/tipp [--shots 16] [--seed 0]
    # 2. the official functions (any interpreter with torch, tqdm, pyyaml)
    python benchmarks/tip_adapter_parity.py reference --out /tmp/tipp --reference /path/to/Tip-Adapter
    # 3. ours and the comparison (project interpreter); writes compare.json
    python -m benchmarks.tip_adapter_parity compare --out /tmp/tipp

The one designed difference: ours searches (alpha, beta) on validation log-likelihood, the official code on
validation accuracy (first best in its beta-major order). ``compare`` reports both choices, and checks our grid and
logits under the official rule (accuracy, beta-major, strict improvement) against the official choice.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import io
import json
import math
import sys
import tempfile
import types
from pathlib import Path

import torch
from torch.nn import functional as F

CLASSES = ("normal", "benign", "malignant")
#: the official ImageNet / OxfordPets / UCF101 configuration, which ours uses
CONFIG = {"search_hp": True, "search_scale": [7, 3], "search_step": [200, 20], "init_beta": 1, "init_alpha": 1.17,
          "lr": 0.001, "augment_epoch": 1, "train_epoch": 20, "load_cache": False, "load_pre_feat": False}
BATCH = 256
NOISE, TEXT_NOISE, SPREAD = 1.5, 0.6, 0.15


def make(out: Path, shots: int, val: int, dim: int, seed: int) -> None:
    """Class-structured raw features (random norms) and unit text near the class means; labels 0, 1, 2 per class."""
    g = torch.Generator().manual_seed(seed)
    # close class means (a shared direction) and heavy noise: a task neither side solves perfectly, so that the
    # epoch and (alpha, beta) choices are not decided by ties at 100 % accuracy
    shared = F.normalize(torch.randn(dim, generator=g), dim=0)
    means = F.normalize(shared + SPREAD * F.normalize(torch.randn(len(CLASSES), dim, generator=g), dim=-1), dim=-1)

    def draw(per_class: int):
        y = torch.arange(len(CLASSES)).repeat_interleave(per_class)
        f = F.normalize(means[y] + NOISE * F.normalize(torch.randn(len(y), dim, generator=g), dim=-1), dim=-1)
        return f * (0.5 + 10 * torch.rand(len(y), 1, generator=g)), y  # raw: both sides normalise

    (f, y), (vf, vy) = draw(shots), draw(val)
    text = F.normalize(means + TEXT_NOISE * F.normalize(torch.randn(len(CLASSES), dim, generator=g), dim=-1), dim=-1)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"shots": f, "labels": y, "val": vf, "val_labels": vy, "text": text, "seed": seed},
               out / "inputs.pt")


class _Batches:
    """The Tip-Adapter-F "loader": our batch order (one randperm of the shots per epoch from the seed)."""

    def __init__(self, f: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        self.f, self.y, self.generator = f, y, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.y) / BATCH)

    def __iter__(self):
        for idx in torch.randperm(len(self.y), generator=self.generator).split(BATCH):
            yield self.f[idx], self.y[idx]


def _fixed(f: torch.Tensor, y: torch.Tensor):
    """An unshuffled loader of (features, labels) in batches of 256 (the official cache and val loaders')."""
    return [(f[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(y), BATCH)]


def reference(out: Path, checkout: Path) -> None:
    data = torch.load(out / "inputs.pt", weights_only=True)
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU: the official code calls .cuda() throughout
    torch.nn.Module.cuda = lambda self, *a, **k: self
    stub = types.ModuleType  # main.py's dataset and CLIP imports: no image is read here
    sys.modules["datasets"] = stub("datasets")
    sys.modules["datasets"].build_dataset = None
    sys.modules["datasets.utils"] = stub("datasets.utils")
    sys.modules["datasets.utils"].build_data_loader = None
    sys.modules["clip"] = stub("clip")
    sys.path.insert(0, str(checkout))
    import main as tip_main  # the official main.py, from the checkout
    import utils as tip_utils

    # cls_acc's float() of a 1-element array: NumPy >= 2 refuses it (the code predates NumPy 2)
    tip_utils.float = lambda x: builtins.float(x.item() if hasattr(x, "item") else x)

    class Features(torch.nn.Module):  # the "CLIP model": the loaders already yield (raw) features
        dtype = torch.float32

        def encode_image(self, x):
            return x.clone()

    model = Features()
    cache_dir = tempfile.mkdtemp(prefix="tip_parity_")
    cfg = {**CONFIG, "cache_dir": cache_dir, "shots": len(data["labels"]) // len(CLASSES)}
    text = data["text"].T.contiguous()  # clip_weights: (D, C)
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet, contextlib.redirect_stderr(io.StringIO()):
        keys, values = tip_utils.build_cache_model(cfg, model, _fixed(data["shots"], data["labels"]))
        values = values.float()
        # run_tip_adapter_F's adapter weight is a view of cache_keys: its training changes them in place
        initial_keys = keys.T.clone()
        vf, vy = tip_utils.pre_load_features(cfg, "val", model, _fixed(data["val"], data["val_labels"]))
        # Tip-Adapter: every tensor the official run_tip_adapter assigns to cache_logits / tip_logits, in order
        seen = {"cache_logits": [], "tip_logits": []}

        def lines(frame, event, arg):
            for name, kept in seen.items():
                value = frame.f_locals.get(name)
                if value is not None and (not kept or kept[-1] is not value):
                    kept.append(value)
            return lines

        def calls(frame, event, arg):
            if frame.f_code is tip_main.run_tip_adapter.__code__:
                return lines
            return None

        sys.settrace(calls)
        try:  # val = test = our validation images (the official code picks (alpha, beta) on val)
            tip_main.run_tip_adapter(cfg, keys, values, vf, vy, vf, vy, text)
        finally:
            sys.settrace(None)
        tip = {"cache_logits_init": seen["cache_logits"][0], "tip_logits_init": seen["tip_logits"][0],
               "cache_logits_best": seen["cache_logits"][-1], "tip_logits_best": seen["tip_logits"][-1]}
        tip["beta"], tip["alpha"] = tip_utils.search_hp(cfg, keys, values, vf, vy, text)
        tip["val_accuracy_at_search"] = tip_utils.cls_acc(tip["tip_logits_best"], vy) / 100.0

        captured = {}

        def grab(frame, event, arg):
            if event == "return" and frame.f_code is tip_main.run_tip_adapter_F.__code__:
                captured.update(frame.f_locals)

        sys.setprofile(grab)
        try:
            tip_main.run_tip_adapter_F(cfg, keys, values, vf, vy, vf, vy, text, model,
                                       _Batches(data["shots"], data["labels"], data["seed"]))
        finally:
            sys.setprofile(None)
    c = captured
    tip_f = {"keys": c["adapter"].weight.detach().clone(), "beta": c["best_beta"], "alpha": c["best_alpha"],
             "epoch": c["best_epoch"] + 1, "val_accuracy_init_hp": c["best_acc"] / 100.0,
             "tip_logits_best": c["tip_logits"].detach().clone()}
    torch.save({"keys": initial_keys, "values": values, "val": vf, "tip": tip, "tip_f": tip_f,
                "config": {k: v for k, v in cfg.items() if k != "cache_dir"}}, out / "reference.pt")
    print(f"reference written to {out / 'reference.pt'}")


def _official_rule(method, vf: torch.Tensor, vy: torch.Tensor) -> tuple[float, float]:
    """Our grid and logits under the official selection rule: accuracy, beta outer, alpha inner, strict >."""
    best, choice = 0.0, (0.0, 0.0)
    for beta in method.BETAS:
        for alpha in method.ALPHAS:
            acc = float((method._logits(vf, alpha, beta).argmax(-1) == vy).float().mean())
            if acc > best:
                best, choice = acc, (alpha, beta)
    return choice


def compare(out: Path) -> dict:
    from benchmarks.methods import classifiers
    from benchmarks.methods.base import FitData
    from monai_ultraad.networks import VisualFeatures

    data = torch.load(out / "inputs.pt", weights_only=True)
    ref = torch.load(out / "reference.pt", weights_only=True)
    classifiers.class_text = lambda backbone, names: data["text"]  # the random class text on both sides
    features = lambda f: VisualFeatures(f, torch.zeros(len(f), 1, 1, 1))
    fit = FitData(features(data["shots"]), data["labels"], None, features(data["val"]), data["val_labels"], [], [],
                  [], None, data["seed"])
    vf, vy = classifiers.normalised_cls(fit.val_features), data["val_labels"]
    diff = lambda a, b: float((a.detach() - b).abs().max())
    cfg = ref["config"]
    a0, b0 = cfg["init_alpha"], cfg["init_beta"]
    report: dict = {"inputs": {"shots": len(data["labels"]), "val": len(vy), "dim": data["shots"].shape[1],
                               "seed": data["seed"], "config": cfg}}

    tip = classifiers.TipAdapter(None, CLASSES)
    info = tip.fit(fit)
    cache = lambda m, f, beta: torch.exp(-beta * (1.0 - f @ m.keys.T)) @ m.values
    r = ref["tip"]
    ours_rule = _official_rule(tip, vf, vy)
    report["Tip-Adapter"] = {
        "max abs diff cache keys (normalised shots)": diff(tip.keys.detach(), ref["keys"]),
        "max abs diff cache values (one-hot)": diff(tip.values, ref["values"]),
        "max abs diff val features (normalised)": diff(vf, ref["val"]),
        "max abs diff alpha grid": max(abs(a - b) for a, b in zip(tip.ALPHAS, _grid(cfg, 1))),
        "max abs diff beta grid": max(abs(a - b) for a, b in zip(tip.BETAS, _grid(cfg, 0))),
        f"max abs diff cache logits at beta={b0}": diff(cache(tip, vf, b0), r["cache_logits_init"]),
        f"max abs diff tip logits at (alpha, beta)=({a0}, {b0})": diff(tip._logits(vf, a0, b0), r["tip_logits_init"]),
        "max abs tip logit": float(r["tip_logits_init"].abs().max()),
        "(alpha, beta) official (val accuracy)": (r["alpha"], r["beta"]),
        "(alpha, beta) ours under the official rule": ours_rule,
        "(alpha, beta) ours (val log-likelihood, as the benchmark runs)": (info["alpha"], info["beta"]),
        "max abs diff cache logits at the official beta": diff(cache(tip, vf, r["beta"]), r["cache_logits_best"]),
        "max abs diff tip logits at the official (alpha, beta)": diff(tip._logits(vf, r["alpha"], r["beta"]),
                                                                      r["tip_logits_best"]),
        "val accuracy at (official, ours) choice": (
            _acc(r["tip_logits_best"], vy), _acc(tip._logits(vf, info["alpha"], info["beta"]), vy)),
    }

    tip_f = classifiers.TipAdapterF(None, CLASSES)
    info_f = tip_f.fit(fit)
    r = ref["tip_f"]
    ours_rule = _official_rule(tip_f, vf, vy)
    report["Tip-Adapter-F"] = {
        "best epoch (ours, official; 1-based)": (info_f["best_epoch"], r["epoch"]),
        "val accuracy at init (alpha, beta), best epoch (ours, official)": (info_f["val_accuracy"],
                                                                            r["val_accuracy_init_hp"]),
        "max abs diff learned keys": diff(tip_f.keys.detach(), r["keys"]),
        "max abs learned key change (official)": diff(r["keys"], ref["keys"]),
        "(alpha, beta) official (val accuracy)": (r["alpha"], r["beta"]),
        "(alpha, beta) ours under the official rule": ours_rule,
        "(alpha, beta) ours (val log-likelihood, as the benchmark runs)": (info_f["alpha"], info_f["beta"]),
        "max abs diff final logits at the official (alpha, beta)": diff(tip_f._logits(vf, r["alpha"], r["beta"]),
                                                                        r["tip_logits_best"]),
        "max abs final logit": float(r["tip_logits_best"].abs().max()),
        "val accuracy at (official, ours) choice": (
            _acc(r["tip_logits_best"], vy), _acc(tip_f._logits(vf, info_f["alpha"], info_f["beta"]), vy)),
    }
    report = json.loads(json.dumps(report, default=float))
    print(json.dumps(report, indent=1))
    (out / "compare.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _grid(cfg: dict, which: int) -> list[float]:
    """The official search list (utils.search_hp's formula) for beta (0) or alpha (1)."""
    scale, step = cfg["search_scale"][which], cfg["search_step"][which]
    return [i * (scale - 0.1) / step + 0.1 for i in range(step)]


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("make", "reference", "compare"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", type=Path, help="checkout of gaopengcuhk/Tip-Adapter (reference step)")
    parser.add_argument("--shots", type=int, default=16, help="shots per class (3 classes)")
    parser.add_argument("--val", type=int, default=30, help="validation images per class")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.step == "make":
        make(args.out, args.shots, args.val, args.dim, args.seed)
    elif args.step == "reference":
        if args.reference is None:
            parser.error("reference needs --reference")
        reference(args.out, args.reference)
    else:
        compare(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
