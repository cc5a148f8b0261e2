"""Parity of the benchmark's AnomalyCLIP (benchmarks/methods/anomalyclip.py) with the reference code
(github zqhang/AnomalyCLIP, its own OpenAI-style CLIP in AnomalyCLIP_lib), on the same random weights and inputs.

The reference code is not part of this project: bring it in outside the tree (e.g. ``git archive`` of a snapshot
into /work/ref16b) and run the reference step in an interpreter where it imports (it needs ``thop`` and
``pkg_resources`` besides torch). Both sides load one open_clip ViT-B-16 (QuickGELU, as the reference's CLIP) state
dict; our learnt-prompt parameters are loaded into the reference's prompt learner.

    # 1. weights, prompt parameters, inputs (project interpreter)
    python -m benchmarks.anomalyclip_parity make --out /tmp/parity
    # 2. the reference's outputs (REF: the folder holding AnomalyCLIP_lib/, prompt_ensemble.py, loss.py)
    /path/to/ref/python benchmarks/anomalyclip_parity.py reference --out /tmp/parity --ref REF
    # 3. ours, and the comparison (project interpreter)
    python -m benchmarks.anomalyclip_parity compare --out /tmp/parity

Compared, float32 on CPU: the DPAM path's projected tokens at 4 blocks, the global embedding, the two prompts'
text embeddings (12 context tokens, deep tokens in text blocks 2-9), image scores and maps as the reference's
test.py computes them (last-block tap, scipy Gaussian sigma 4), the training loss of train.py on one batch, and its
gradients with respect to every prompt parameter.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ARCH = "ViT-B-16-quickgelu"  # the reference's CLIP uses QuickGELU
N_CTX, DEPTH, DEEP_LENGTH = 12, 9, 4  # the reference's defaults (train.py)
TAPS = (3, 6, 9, 12)


def make(out: Path, seed: int = 0, n_test: int = 2) -> None:
    import warnings

    import open_clip

    from benchmarks.methods.anomalyclip import AnomalyCLIPPrompts, dpam_start
    from monai_ultraad.networks import ClipBackbone

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.create_model(ARCH, pretrained=None)
    with torch.no_grad():  # random init leaves LayerNorms etc. at constants: perturb all so that every weight matters
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    torch.save(model.state_dict(), out / "weights.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = ClipBackbone(ARCH, str(out / "weights.pt"), feature_layers=(12,))
    prompts = AnomalyCLIPPrompts(backbone, N_CTX, DEPTH, DEEP_LENGTH, seed=seed)
    with torch.no_grad():
        prompts.ctx.mul_(5.0)  # larger than the 0.02 init, so that the prompts move the text clearly
        # the reference casts deep tokens to float16 as it inserts them: give it values float16 holds exactly
        prompts.deep.copy_((prompts.deep * 5.0).half().float())
    size = backbone.image_size
    images = torch.randn(n_test, 3, size, size)
    masks = torch.zeros(n_test, 1, size, size)
    masks[-1, :, 40:120, 60:200] = 1.0  # the last image abnormal, an off-diagonal box (a transpose would show)
    labels = torch.tensor([0] * (n_test - 1) + [1])
    torch.save({"ctx": prompts.ctx.detach(), "deep": prompts.deep.detach()}, out / "prompts.pt")
    torch.save({"images": images, "masks": masks, "labels": labels,
                "dpam_start": dpam_start(len(backbone.visual.transformer.resblocks)), "taps": list(TAPS)},
               out / "inputs.pt")


def reference(out: Path, ref: Path) -> None:
    """The reference code's outputs (run in the reference interpreter, with ``ref`` importable)."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    sys.path.insert(0, str(ref))
    import AnomalyCLIP_lib
    from AnomalyCLIP_lib.build_model import build_model
    from loss import BinaryDiceLoss, FocalLoss
    from prompt_ensemble import AnomalyCLIP_PromptLearner

    design = {"Prompt_length": N_CTX, "learnabel_text_embedding_depth": DEPTH,
              "learnabel_text_embedding_length": DEEP_LENGTH}
    state = torch.load(out / "weights.pt", weights_only=True)
    model = build_model("ViT-B/16", dict(state), design).float().eval()  # strict load_state_dict inside
    learner = AnomalyCLIP_PromptLearner(model, design)
    given = torch.load(out / "prompts.pt", weights_only=True)
    params = learner.state_dict()
    params["ctx_pos"] = given["ctx"][0].reshape(params["ctx_pos"].shape)
    params["ctx_neg"] = given["ctx"][1].reshape(params["ctx_neg"].shape)
    for i in range(DEPTH - 1):
        params[f"compound_prompts_text.{i}"] = given["deep"][i]
    learner.load_state_dict(params)
    inputs = torch.load(out / "inputs.pt", weights_only=True)
    n_blocks = len(model.visual.transformer.resblocks)
    dpam_layer = n_blocks - inputs["dpam_start"] + 2  # DAPM_replace swaps the last DPAM_layer - 1 blocks
    model.visual.DAPM_replace(DPAM_layer=dpam_layer)
    size = inputs["images"].shape[-1]

    def text_features():
        prompts, tokenized, compound = learner(cls_id=None)
        text = model.encode_text_learn(prompts, tokenized, compound).float()
        text = torch.stack(torch.chunk(text, dim=0, chunks=2), dim=1)
        return text / text.norm(dim=-1, keepdim=True), tokenized

    with torch.no_grad():
        text, tokenized = text_features()
        results = {"dpam_layer": dpam_layer, "tokens": tokenized, "text": text[0]}
        image, patches = model.encode_image(inputs["images"], inputs["taps"], DPAM_layer=dpam_layer)
        results["image"], results["patches"] = image, torch.stack(patches, dim=1)
        scores, maps = [], []
        for one in inputs["images"].split(1):  # test.py: batch 1, features_list 24 (the last block)
            feats, tokens = model.encode_image(one, [n_blocks], DPAM_layer=dpam_layer)
            feats = feats / feats.norm(dim=-1, keepdim=True)
            scores.append((feats @ text.permute(0, 2, 1) / 0.07).softmax(-1)[:, 0, 1])
            layer_maps = []
            for patch in tokens:
                patch = patch / patch.norm(dim=-1, keepdim=True)
                similarity, _ = AnomalyCLIP_lib.compute_similarity(patch, text[0])
                sim = AnomalyCLIP_lib.get_similarity_map(similarity[:, 1:, :], size)
                layer_maps.append((sim[..., 1] + 1 - sim[..., 0]) / 2.0)
            amap = torch.stack(layer_maps).sum(dim=0)
            maps.append(torch.stack([torch.from_numpy(gaussian_filter(m, sigma=4)) for m in amap.numpy()]))
        results["score"], results["map"] = torch.cat(scores), torch.cat(maps)
    # train.py's loss on one batch (its lines, without .cuda()), and its gradients
    focal, dice = FocalLoss(), BinaryDiceLoss()
    gt = inputs["masks"].squeeze(1)
    with torch.no_grad():
        image, patches = model.encode_image(inputs["images"], [n_blocks], DPAM_layer=dpam_layer)
        image = image / image.norm(dim=-1, keepdim=True)
    text, _ = text_features()
    probs = (image.unsqueeze(1) @ text.permute(0, 2, 1))[:, 0, ...] / 0.07
    image_loss = torch.nn.functional.cross_entropy(probs.squeeze(), inputs["labels"].long())
    loss = 0
    for patch in patches:
        patch = patch / patch.norm(dim=-1, keepdim=True)
        similarity, _ = AnomalyCLIP_lib.compute_similarity(patch, text[0])
        sim = AnomalyCLIP_lib.get_similarity_map(similarity[:, 1:, :], size).permute(0, 3, 1, 2)
        loss += focal(sim, gt) + dice(sim[:, 1, :, :], gt) + dice(sim[:, 0, :, :], 1 - gt)
    total = 4 * loss + image_loss
    total.backward()
    results["loss"] = total.detach()
    results["grad_ctx"] = torch.cat([learner.ctx_pos.grad.reshape(1, N_CTX, -1),
                                     learner.ctx_neg.grad.reshape(1, N_CTX, -1)])
    results["grad_deep"] = torch.stack([p.grad if p.grad is not None else torch.zeros_like(p)
                                        for p in learner.compound_prompts_text])
    results["np_version"] = np.__version__
    torch.save(results, out / "reference.pt")


def compare(out: Path) -> dict:
    import warnings

    from benchmarks.methods import anomalyclip
    from monai_ultraad.networks import ClipBackbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = ClipBackbone(ARCH, str(out / "weights.pt"), feature_layers=(12,))
    ref = torch.load(out / "reference.pt", weights_only=False)
    inputs = torch.load(out / "inputs.pt", weights_only=True)
    given = torch.load(out / "prompts.pt", weights_only=True)
    prompts = anomalyclip.AnomalyCLIPPrompts(backbone, N_CTX, DEPTH, DEEP_LENGTH)
    with torch.no_grad():
        prompts.ctx.copy_(given["ctx"])
        prompts.deep.copy_(given["deep"])
    images, size = inputs["images"], inputs["images"].shape[-1]
    with torch.no_grad():
        text = prompts()
        image, patches = anomalyclip.dpam_features(backbone, images, inputs["taps"], inputs["dpam_start"])
        score, amap = anomalyclip.anomalyclip_outputs(image, patches[:, -1:], text, size)
        plain = backbone.visual.forward_intermediates(images, indices=[t - 1 for t in inputs["taps"]],
                                                      normalize_intermediates=True, output_fmt="NLC")
    plain_tokens = torch.stack(plain["image_intermediates"], dim=1) @ backbone.visual.proj  # (B, L, N, D)
    text_grad = prompts()
    loss = anomalyclip.anomalyclip_loss(image, patches[:, -1:], text_grad, inputs["labels"], inputs["masks"])
    loss.backward()

    def diff(a, b) -> float:
        return float((a.float() - b.float()).abs().max())

    ref_patches = ref["patches"][:, :, 1:]
    report = {
        "tokens_equal": bool(torch.equal(prompts.tokens.long(), ref["tokens"].long())),
        "dpam_start_block": inputs["dpam_start"], "reference_DPAM_layer": ref["dpam_layer"],
        "dpam_patch_tokens_max_abs_diff": diff(patches[:, :, 1:], ref_patches),
        "dpam_patch_tokens_abs_max": float(ref_patches.abs().max()),
        "dpam_vs_plain_tower_max_abs_diff": diff(patches[:, :, 1:], plain_tokens),  # intermediates: patches only
        "global_embedding_max_abs_diff": diff(image, ref["image"]),
        "text_embeddings_max_abs_diff": diff(text, ref["text"]),
        "image_score_max_abs_diff": diff(score, ref["score"]),
        "map_max_abs_diff": diff(amap, ref["map"]),
        "loss": [float(loss), float(ref["loss"])],
        "loss_abs_diff": abs(float(loss) - float(ref["loss"])),
        "grad_ctx_max_abs_diff": diff(prompts.ctx.grad, ref["grad_ctx"]),
        "grad_ctx_abs_max": float(ref["grad_ctx"].abs().max()),
        "grad_deep_max_abs_diff": diff(prompts.deep.grad, ref["grad_deep"]),
        "grad_deep_abs_max": float(ref["grad_deep"].abs().max()),
        "score_range": [float(score.min()), float(score.max())],
        "map_range": [float(amap.min()), float(amap.max())],
    }
    print(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("make", "reference", "compare"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ref", type=Path, default=None, help="reference step: folder of the reference code")
    args = parser.parse_args(argv)
    if args.step == "reference":
        if args.ref is None:
            parser.error("the reference step needs --ref (the folder holding AnomalyCLIP_lib/)")
        reference(args.out, args.ref)
    else:
        with torch.no_grad() if args.step == "make" else torch.enable_grad():
            {"make": make, "compare": compare}[args.step](args.out)
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a file by the reference interpreter: the project is not imported
        sys.path.pop(0)
    sys.exit(main())
