"""Parity of the benchmark's WinCLIP / WinCLIP+ (benchmarks/methods/winclip.py) with anomalib's WinClipModel.

anomalib is not a dependency of this project: the reference side runs only where it is installed, in its own
interpreter (anomalib pins open_clip < 2.26.1, whose transformer is sequence-first; the project uses open_clip 3).
Both sides load the same weight file and the same input tensors; the prompts are anomalib's, fed to both.

    # 1. weights and inputs (project interpreter)
    python -m benchmarks.winclip_parity make --out /tmp/parity
    # 2. anomalib's outputs (an interpreter with anomalib and open_clip < 2.26.1 importable)
    /path/to/ref/python benchmarks/winclip_parity.py reference --out /tmp/parity
    # 3. ours, and the comparison (project interpreter)
    python -m benchmarks.winclip_parity compare --out /tmp/parity

The comparison prints the max abs difference of image scores and patch-grid / full-resolution maps, zero-shot and
few-shot, in float32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ARCH = "ViT-B-16"


def make(out: Path, seed: int = 0, n_test: int = 2, n_ref: int = 1) -> None:
    import open_clip

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.create_model(ARCH, pretrained=None)
    # random init leaves some parameters at constants (e.g. LayerNorm); perturb all so that every weight matters
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    torch.save(model.state_dict(), out / "weights.pt")
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list)) else model.visual.image_size
    torch.save({"test": torch.randn(n_test, 3, size, size), "reference": torch.randn(n_ref, 3, size, size)},
               out / "inputs.pt")


def _import_anomalib_winclip():
    """anomalib's winclip modules, without the package __init__ files (they import lightning, jsonargparse, ...):
    empty parent packages pointing at anomalib's folders, and the two names torch_model takes from elsewhere in
    anomalib (its buffer mixins, loaded from their own files, and a stand-in for the InferenceBatch record)."""
    import importlib.util
    import types
    from collections import namedtuple

    spec = importlib.util.find_spec("anomalib")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("anomalib is not importable here (pip install anomalib, or put it on PYTHONPATH)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, folder in (("anomalib", root), ("anomalib.models", root / "models"),
                         ("anomalib.models.image", root / "models/image"),
                         ("anomalib.models.image.winclip", root / "models/image/winclip"),
                         ("anomalib.models.components", root / "models/components"),
                         ("anomalib.models.components.base", root / "models/components/base")):
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules[name] = module
    data = types.ModuleType("anomalib.data")
    data.InferenceBatch = namedtuple("InferenceBatch", ["pred_score", "anomaly_map"])
    sys.modules["anomalib.data"] = data
    import importlib

    components = sys.modules["anomalib.models.components"]
    components.BufferListMixin = importlib.import_module("anomalib.models.components.base.buffer_list").BufferListMixin
    components.DynamicBufferMixin = importlib.import_module(
        "anomalib.models.components.base.dynamic_buffer").DynamicBufferMixin
    torch_model = importlib.import_module("anomalib.models.image.winclip.torch_model")
    prompting = importlib.import_module("anomalib.models.image.winclip.prompting")
    return torch_model, prompting.create_prompt_ensemble


def reference(out: Path) -> None:
    """anomalib's WinClipModel on the weights and inputs (run in the reference interpreter)."""
    import open_clip

    torch_model, create_prompt_ensemble = _import_anomalib_winclip()

    model = open_clip.create_model(ARCH, pretrained=None)
    missing, unexpected = model.load_state_dict(torch.load(out / "weights.pt", weights_only=True), strict=False)
    torch_model.open_clip.create_model_and_transforms = lambda *a, **k: (model, None, None)
    inputs = torch.load(out / "inputs.pt", weights_only=True)
    results = {"load": {"missing": list(missing), "unexpected": list(unexpected)}}
    zero = torch_model.WinClipModel(class_name="object").eval()
    pred = zero(inputs["test"])
    results["zero"] = {"score": pred.pred_score, "map": pred.anomaly_map}
    few = torch_model.WinClipModel(class_name="object", reference_images=inputs["reference"]).eval()
    pred = few(inputs["test"])
    results["few"] = {"score": pred.pred_score, "map": pred.anomaly_map}
    results["text"] = zero.text_embeddings
    results["prompts"] = create_prompt_ensemble("object")
    torch.save(results, out / "reference.pt")


def compare(out: Path) -> dict:
    import warnings

    from torch.nn import functional as F

    from benchmarks.methods import winclip
    from monai_ultraad.networks import ClipBackbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = ClipBackbone(ARCH, str(out / "weights.pt"), feature_layers=(12,))
    ref = torch.load(out / "reference.pt", weights_only=False)
    inputs = torch.load(out / "inputs.pt", weights_only=True)
    normal, abnormal = ref["prompts"]
    text = winclip.text_embeddings(backbone, normal, abnormal)
    grid, size = backbone.grid_size, backbone.image_size
    image_emb, windows, patches = winclip.encode_windows(backbone, inputs["test"])
    _, ref_windows, ref_patches = winclip.encode_windows(backbone, inputs["reference"])
    memory = [ref_patches.flatten(0, 1)] + [w.flatten(0, 1) for w in ref_windows]
    report = {"load": ref["load"], "text_embeddings": float((text - ref["text"].float()).abs().max())}
    for mode, mem in (("zero", None), ("few", memory)):
        score, patch = winclip.winclip_scores(image_emb, windows, patches, text, grid, mem)
        full = F.interpolate(patch.view(-1, 1, grid, grid), size=(size, size), mode="bilinear")[:, 0]
        report[mode] = {
            "score_max_abs_diff": float((score - ref[mode]["score"].float()).abs().max()),
            "map_max_abs_diff": float((full - ref[mode]["map"].float()).abs().max()),
            "score_range": [float(score.min()), float(score.max())],
            "map_range": [float(full.min()), float(full.max())],
        }
    print(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("make", "reference", "compare"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    {"make": make, "reference": reference, "compare": compare}[args.step](args.out)
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a file by the reference interpreter: the project is not imported
        sys.path.pop(0)
    sys.exit(main())
