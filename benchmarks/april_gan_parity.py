"""Parity of the benchmark's April-GAN (benchmarks/methods/anomaly.py) with the official code, ByChelsea/VAND-APRIL-GAN.

The official code is not part of this project: the reference step runs its own ``test.py`` (its bundled, modified
open_clip, its LinearLayer, its prompt ensemble, its few-shot memory and its test loop) on a small MVTec-layout
folder written by ``make``, from a checkout outside the project (``--ref``, e.g. /work/ref16c/april). Its code is
run, not copied: the step wraps four of its functions to record what they see (the model inputs, the tapped tokens,
the linear outputs, the per-image maps and the image scores). One line of the checkout must change to run on a CPU:
``open_clip/transformer.py`` builds an attention summary with ``.to('cuda')`` (unused by the maps); the README of the
results says how it was edited.

    # 1. weights (random open_clip ViT-B-16, perturbed), linear layers, PNG images, masks (project interpreter)
    python -m benchmarks.april_gan_parity make --out /tmp/agp
    # 2. the official test.py, zero-shot and few-shot (an interpreter with its deps: cv2, tabulate, skimage, sklearn)
    python benchmarks/april_gan_parity.py reference --out /tmp/agp --ref /path/to/VAND-APRIL-GAN
    # 3. ours on the tensors the official code fed its model, and the comparison (project interpreter)
    python -m benchmarks.april_gan_parity compare --out /tmp/agp

The official code applies no Gaussian smoothing (test.py sums the maps); the benchmark's method smooths with
sigma 4. The comparison therefore reports the unsmoothed maps against the official ones and the smoothed map against
the official map smoothed by scipy.ndimage.gaussian_filter(sigma 4), so the smoothing is checked against an
independent implementation too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ARCH = "ViT-B-16"
LAYERS = (3, 6, 9, 12)
OBJECT = "object"
N_TEST, N_NORMAL = 4, 2


def make(out: Path, seed: int = 0) -> None:
    import numpy as np
    import open_clip
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.create_model(ARCH, pretrained=None)
    with torch.no_grad():  # random init leaves LayerNorms etc. at constants: perturb every parameter
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    torch.save(model.state_dict(), out / "weights.pt")
    torch.manual_seed(seed + 1)  # the linear layers as AprilGAN.fit builds them (nn.Linear's default init)
    linears = torch.nn.ModuleList(torch.nn.Linear(768, 512) for _ in LAYERS)
    torch.save({"trainable_linearlayer": {f"fc.{k}": v for k, v in linears.state_dict().items()}},
               out / "linear.pth")
    rng = np.random.default_rng(seed)
    root = out / "data" / "mvtec"
    meta = {"train": {OBJECT: []}, "test": {OBJECT: []}}
    for split, n in (("train", N_NORMAL), ("test", N_TEST)):
        for i in range(n):
            anomaly = int(split == "test" and i % 2 == 1)
            folder = root / OBJECT / split / ("defect" if anomaly else "good")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
            entry = {"img_path": f"{OBJECT}/{split}/{folder.name}/{i:03d}.png", "mask_path": "", "cls_name": OBJECT,
                     "specie_name": folder.name, "anomaly": anomaly}
            if anomaly:
                mask = np.zeros((224, 224), np.uint8)
                mask[60 + 20 * i:140, 50:150] = 255
                (root / OBJECT / "ground_truth" / "defect").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / OBJECT / "ground_truth" / "defect" / f"{i:03d}_mask.png")
                entry["mask_path"] = f"{OBJECT}/ground_truth/defect/{i:03d}_mask.png"
            meta[split][OBJECT].append(entry)
    (root / "meta.json").write_text(json.dumps(meta))


def reference(out: Path, ref: Path) -> None:
    """The official test.py, zero-shot then few-shot, with recorders around its functions."""
    import os
    import shutil

    sys.path.insert(0, str(ref))
    os.chdir(ref)  # its tokenizer and model configs are found relative to its files, its prompts module by name
    import model as official_model
    import open_clip as official_open_clip
    import test as official_test
    from PIL import Image

    fromarray = Image.fromarray

    def fromarray_l(array, mode=None):  # its dataset builds mode-L masks from float arrays, refused by Pillow >= 11
        return fromarray(array.astype("uint8") if mode == "L" else array, mode=mode)

    Image.fromarray = fromarray_l
    weights = torch.load(out / "weights.pt", weights_only=True)
    clip, _, preprocess = official_open_clip.create_model_and_transforms(ARCH, 224, pretrained=None)
    load = clip.load_state_dict(weights, strict=False)
    clip.eval()
    official_test.open_clip.create_model_and_transforms = lambda *a, **k: (clip, None, preprocess)

    record: dict = {}

    def run(mode: str) -> dict:
        seen = {"encode": [], "linear_in": [], "linear_out": [], "maps": [], "auroc_args": []}
        encode = clip.encode_image

        def recording_encode(image, out_layers, normalize=False):
            pooled, tokens = encode(image, out_layers, normalize)
            seen["encode"].append({"image": image.clone(), "layers": list(out_layers), "pooled": pooled.clone(),
                                   "tokens": [t.clone() for t in tokens]})
            return pooled, tokens

        forward = official_model.LinearLayer.forward

        def recording_forward(self, tokens):
            seen["linear_in"].append([t.clone() for t in tokens])
            result = forward(self, tokens)
            seen["linear_out"].append([t.clone() for t in result])
            return result

        normalize, roc = official_test.normalize, official_test.roc_auc_score

        def recording_normalize(pred, *a, **k):
            seen["maps"].append(torch.as_tensor(pred).clone())
            return normalize(pred, *a, **k)

        def recording_roc(y_true, y_score, *a, **k):
            seen["auroc_args"].append(torch.as_tensor(y_score, dtype=torch.float64).clone())
            return roc(y_true, y_score, *a, **k)

        clip.encode_image = recording_encode
        official_model.LinearLayer.forward = recording_forward
        official_test.LinearLayer = official_model.LinearLayer
        official_test.normalize, official_test.roc_auc_score = recording_normalize, recording_roc
        save = out / f"official_{mode}"
        shutil.rmtree(save, ignore_errors=True)  # its sampler appends the picked shots to save/k_shot.txt
        args = argparse.Namespace(
            data_path=str(out / "data" / "mvtec"), save_path=str(save), checkpoint_path=str(out / "linear.pth"),
            config_path=str(ref / "open_clip/model_configs/ViT-B-16.json"), dataset="mvtec", model=ARCH,
            pretrained="none", features_list=list(LAYERS), few_shot_features=list(LAYERS), image_size=224,
            mode=mode, k_shot=N_NORMAL, seed=10)
        official_test.setup_seed(args.seed)
        with torch.no_grad():
            official_test.test(args)
        clip.encode_image = encode
        official_model.LinearLayer.forward = forward
        official_test.normalize, official_test.roc_auc_score = normalize, roc
        shots = [line.strip() for line in (save / "k_shot.txt").read_text().splitlines()] if mode == "few_shot" else []
        return {**seen, "shots": shots}

    record["zero_shot"] = run("zero_shot")
    record["few_shot"] = run("few_shot")
    tokenizer, sentences = official_open_clip.get_tokenizer(ARCH), []

    def recording_tokenizer(texts):  # the official sentences, normal then abnormal, so that ours encodes the same
        sentences.append(list(texts))
        return tokenizer(texts)

    prompts = official_test.encode_text_with_prompt_ensemble(clip, [OBJECT], recording_tokenizer, "cpu")
    record["text"] = prompts[OBJECT].T.clone()  # (2, D): [normal, abnormal]
    record["sentences"] = sentences
    record["load"] = {"missing": list(load.missing_keys), "unexpected": list(load.unexpected_keys)}
    torch.save(record, out / "reference.pt")


def compare(out: Path) -> dict:
    import warnings

    import numpy as np
    from scipy.ndimage import gaussian_filter

    from benchmarks.methods.anomaly import AprilGAN
    from benchmarks.methods.common import encode_ensemble
    from benchmarks.methods.derived import raw_taps
    from monai_ultraad.networks import ClipBackbone, VisualFeatures

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = ClipBackbone(ARCH, str(out / "weights.pt"), feature_layers=LAYERS)
    ref = torch.load(out / "reference.pt", weights_only=False)
    zero_ref, few_ref = ref["zero_shot"], ref["few_shot"]
    normal_s, abnormal_s = ref["sentences"]
    text = torch.stack([encode_ensemble(backbone, normal_s), encode_ensemble(backbone, abnormal_s)])

    method = AprilGAN(backbone, ("normal", "abnormal"))
    method.grid, method.size, method.text = backbone.grid_size, backbone.image_size, text
    state = torch.load(out / "linear.pth", weights_only=True)["trainable_linearlayer"]
    method.linears = torch.nn.ModuleList(torch.nn.Linear(768, 512) for _ in LAYERS)
    method.linears.load_state_dict({k[len("fc."):]: v for k, v in state.items()})
    taps = raw_taps(backbone)

    def features(images: torch.Tensor) -> VisualFeatures:
        cls, patches = taps(images)
        return VisualFeatures(cls, patches)

    def diff(a, b) -> float:
        return float((torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max())

    # the test-image calls of encode_image in the zero-shot run: one per image, the memory calls come first in few-shot
    test_calls = zero_ref["encode"]
    images = torch.cat([c["image"] for c in test_calls])
    raw = features(images)
    report: dict = {"load": ref["load"], "arch": ARCH, "layers": list(LAYERS), "n_test": len(images),
                    "text_embeddings": diff(text, ref["text"])}
    official_tokens = torch.stack([torch.cat([c["tokens"][i][:, 1:] for c in test_calls]) for i in range(len(LAYERS))],
                                  dim=1)
    report["tapped_patch_tokens"] = diff(raw.patch_tokens, official_tokens)
    report["tapped_tokens_range"] = [float(official_tokens.min()), float(official_tokens.max())]
    official_pooled = torch.cat([c["pooled"] for c in test_calls])
    report["class_token_embedding"] = diff(raw.cls_token, official_pooled)
    with torch.no_grad():
        projected = torch.stack([lin(raw.patch_tokens[:, i]) for i, lin in enumerate(method.linears)], dim=1)
    official_projected = torch.stack([torch.cat([o[i] for o in zero_ref["linear_out"]]) for i in range(len(LAYERS))],
                                     dim=1)
    report["projected_tokens"] = diff(projected, official_projected)

    # memory: the normal images the official sampler picked (k_shot.txt), encoded from the tensors it fed the model
    n_mem = len(few_ref["shots"])
    mem_calls = few_ref["encode"][:n_mem]
    mem_raw = features(torch.cat([c["image"] for c in mem_calls]))
    method.memory = mem_raw.patch_tokens.float().permute(1, 0, 2, 3).flatten(1, 2)
    official_memory = torch.stack([torch.cat([c["tokens"][i][0, 1:] for c in mem_calls]) for i in range(len(LAYERS))])
    report["memory_tokens"] = diff(method.memory, official_memory)

    zero, few, cls_score = method.branches(raw)
    zero_official = torch.stack([m.reshape(224, 224) for m in zero_ref["maps"]])
    final_official = torch.stack([m.reshape(224, 224) for m in few_ref["maps"]])
    report["zero_shot_map"] = diff(zero[:, 0], zero_official)
    report["few_shot_map"] = diff(few[:, 0], final_official - zero_official)
    report["final_map_unsmoothed"] = diff((zero + few)[:, 0], final_official)
    report["map_ranges"] = {"zero": [float(zero.min()), float(zero.max())], "few": [float(few.min()), float(few.max())]}
    report["class_token_p_abnormal"] = diff(cls_score, zero_ref["auroc_args"][1])  # roc_auc_score(gt_sp, pr_sp)
    blurred = method.blur(zero + few)[:, 0]
    scipy_blurred = torch.from_numpy(np.stack([gaussian_filter(m.numpy().astype(np.float64), sigma=4)
                                               for m in final_official]))
    report["final_map_sigma4_vs_official_plus_scipy_sigma4"] = diff(blurred, scipy_blurred)
    interior = (slice(None), slice(16, -16), slice(16, -16))
    report["final_map_sigma4_interior_16px"] = diff(blurred[interior], scipy_blurred[interior])

    # image score: the official few-shot score 0.5 * (P(abnormal) + min-max over the test set of the map maxima);
    # the min-max statistics from the same test images here (the benchmark takes them from validation images)
    def score(maps: torch.Tensor) -> torch.Tensor:
        peaks = maps.flatten(1).amax(dim=1)
        return 0.5 * (cls_score + (peaks - peaks.min()) / (peaks.max() - peaks.min()))

    report["image_score_unsmoothed"] = diff(score((zero + few)[:, 0]), few_ref["auroc_args"][1])
    official_peaks = scipy_blurred.flatten(1).amax(dim=1)
    official_sigma4_score = 0.5 * (zero_ref["auroc_args"][1] + (official_peaks - official_peaks.min())
                                   / (official_peaks.max() - official_peaks.min()))
    report["image_score_sigma4"] = diff(score(blurred), official_sigma4_score)
    report["image_score_range"] = [float(few_ref["auroc_args"][1].min()), float(few_ref["auroc_args"][1].max())]
    half = VisualFeatures(raw.cls_token.half().float(), raw.patch_tokens.half().float())  # the fp16 feature cache
    zero_h, few_h, _ = method.branches(half)
    report["fp16_cache_effect_on_final_map_unsmoothed"] = diff((zero_h + few_h)[:, 0], final_official)
    print(json.dumps(report, indent=1))
    (out / "compare.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("make", "reference", "compare"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ref", type=Path, help="checkout of ByChelsea/VAND-APRIL-GAN (reference step)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.step == "reference":
        if args.ref is None:
            parser.error("reference needs --ref")
        reference(out, args.ref.resolve())
    else:
        torch.set_grad_enabled(False)
        {"make": make, "compare": compare}[args.step](out)
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a file by the reference interpreter: the project is not imported
        sys.path.pop(0)
    sys.exit(main())
