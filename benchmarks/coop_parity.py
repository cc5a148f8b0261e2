"""Parity of the benchmark's CoOp / CoCoOp (benchmarks/methods/prompt_learning.py) with the official code,
KaiyangZhou/CoOp (trainers/coop.py, trainers/cocoop.py, its ``clip`` package) and Dassl's optimiser and schedule.

Neither is part of this project. The reference step imports the official trainer files from a checkout outside
the project (``--coop``) with the Dassl names they import stubbed, except ``dassl.optim`` (build_optimizer,
build_lr_scheduler), which is Dassl's own code (``--dassl``, a checkout of KaiyangZhou/Dassl.pytorch). It builds
their PromptLearner / TextEncoder / CustomCLIP on the OpenAI-format state dict of the same random CLIP, sets their
context vectors and Meta-Net to ours, and records prompt embeddings, text features, logits, the Meta-Net output and
three epochs of SGD on one batch (Dassl's SGD and ConstantWarmupScheduler, as CoOp's configs set them).

    # 1. weights (open_clip ViT-B-16-quickgelu, random, perturbed; logit scale 100), inputs, our contexts
    python -m benchmarks.coop_parity make --out /tmp/coopp
    # 2. the official classes (an interpreter with torch; the official files are imported, not copied)
    python benchmarks/coop_parity.py reference --out /tmp/coopp --coop /path/to/CoOp --dassl /path/to/Dassl.pytorch
    # 3. ours and the comparison (project interpreter)
    python -m benchmarks.coop_parity compare --out /tmp/coopp

QuickGELU: the official ``clip`` package builds OpenAI's architecture (QuickGELU), so both sides use it. The logit
scale of the weights is set to 100 (OpenAI CLIP's trained value, which ours uses as a constant). The weights are
rounded to float16 values, as OpenAI's checkpoints are: the official ``build_model`` casts them to float16 before
CoOp's fp32 mode casts back, which would otherwise round float32 weights on their side only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ARCH = "ViT-B-16-quickgelu"
CLASSES = ("normal", "benign", "malignant")
EPOCHS, LR, WD = 3, 2e-3, 5e-4


def _backbone(out: Path):
    import warnings

    from monai_ultraad.networks import ClipBackbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ClipBackbone(ARCH, str(out / "weights.pt"), feature_layers=(12,))


def make(out: Path, seed: int = 0) -> None:
    import open_clip

    from benchmarks.methods.common import CLASS_PHRASES
    from benchmarks.methods.prompt_learning import CoCoOp, CoOp

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.create_model(ARCH, pretrained=None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        model.logit_scale.fill_(math.log(100.0))
        for p in model.parameters():  # the official clip.build_model casts to fp16 (OpenAI's checkpoints are fp16)
            p.copy_(p.half().float())  # and CoOp's fp32 mode casts back: fp16-exact weights pass through unchanged
    torch.save(model.state_dict(), out / "weights.pt")
    torch.manual_seed(seed + 1)
    torch.save({"images": torch.randn(4, 3, 224, 224), "labels": torch.tensor([0, 1, 2, 1])}, out / "inputs.pt")
    backbone = _backbone(out)
    coop, cocoop = CoOp(backbone, CLASSES), CoCoOp(backbone, CLASSES)
    coop._build(seed)
    cocoop._build(seed)
    torch.save({"coop_ctx": coop.prompts.ctx.detach().clone(), "cocoop_ctx": cocoop.prompts.ctx.detach().clone(),
                "meta_net": cocoop.meta.state_dict(),
                "phrases": [CLASS_PHRASES[c] for c in CLASSES]},
               out / "ours_init.pt")


def _cfg(n_ctx: int, ctx_init: str, epochs: int):
    from types import SimpleNamespace as N

    optim = N(NAME="sgd", LR=LR, WEIGHT_DECAY=WD, MOMENTUM=0.9, SGD_DAMPNING=0, SGD_NESTEROV=False,
              RMSPROP_ALPHA=0.99, ADAM_BETA1=0.9, ADAM_BETA2=0.999, STAGED_LR=False, NEW_LAYERS=(), BASE_LR_MULT=0.1,
              LR_SCHEDULER="cosine", STEPSIZE=(-1,), GAMMA=0.1, MAX_EPOCH=epochs, WARMUP_EPOCH=1,
              WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5, WARMUP_MIN_LR=1e-5, WARMUP_RECOUNT=True)
    trainer = N(N_CTX=n_ctx, CTX_INIT=ctx_init, CSC=False, CLASS_TOKEN_POSITION="end", PREC="fp32")
    return N(TRAINER=N(COOP=trainer, COCOOP=trainer), INPUT=N(SIZE=(224, 224)), OPTIM=optim)


def _import_official(coop: Path, dassl: Path):
    """The official trainer modules, the Dassl names they import stubbed (registry, trainer base, metrics, utils);
    dassl.optim is Dassl's own code. torch >= 2.7 dropped the ``verbose`` argument Dassl's schedulers pass."""
    import importlib
    import types

    from torch.optim import lr_scheduler

    init = lr_scheduler.LRScheduler.__init__

    def compat(self, optimizer, last_epoch=-1, verbose=None):
        init(self, optimizer, last_epoch)

    lr_scheduler.LRScheduler.__init__ = compat
    sys.path[:0] = [str(coop), str(dassl)]
    pkg = types.ModuleType("dassl")
    pkg.__path__ = [str(dassl / "dassl")]
    sys.modules["dassl"] = pkg
    engine = types.ModuleType("dassl.engine")
    engine.TRAINER_REGISTRY = types.SimpleNamespace(register=lambda *a, **k: (lambda cls: cls))
    engine.TrainerX = object
    metrics = types.ModuleType("dassl.metrics")
    metrics.compute_accuracy = None
    utils = types.ModuleType("dassl.utils")
    utils.load_pretrained_weights = utils.load_checkpoint = None
    sys.modules.update({"dassl.engine": engine, "dassl.metrics": metrics, "dassl.utils": utils})
    optim = importlib.import_module("dassl.optim")
    return (importlib.import_module("trainers.coop"), importlib.import_module("trainers.cocoop"),
            importlib.import_module("clip.clip"), optim)


def reference(out: Path, coop: Path, dassl: Path) -> None:
    from torch.nn import functional as F

    coop_mod, cocoop_mod, clip, optim = _import_official(coop, dassl)
    inputs = torch.load(out / "inputs.pt", weights_only=True)
    ours = torch.load(out / "ours_init.pt", weights_only=True)
    images, labels = inputs["images"], inputs["labels"]
    phrases = ours["phrases"]
    record: dict = {}
    for name, module, n_ctx, ctx_init in (("coop", coop_mod, 16, ""), ("cocoop", cocoop_mod, 4, "a photo of a")):
        clip_model = clip.build_model(torch.load(out / "weights.pt", weights_only=True)).float().eval()
        cfg = _cfg(n_ctx, ctx_init, EPOCHS)
        model = module.CustomCLIP(cfg, phrases, clip_model)
        for param_name, p in model.named_parameters():
            p.requires_grad_("prompt_learner" in param_name)
        learner = model.prompt_learner
        rec = {"init_ctx": learner.ctx.detach().clone(), "logit_scale": float(model.logit_scale.exp())}
        with torch.no_grad():
            learner.ctx.copy_(ours[f"{name}_ctx"].reshape(learner.ctx.shape))
            if name == "cocoop":
                learner.meta_net.load_state_dict(
                    {k.replace("0.", "linear1.").replace("2.", "linear2."): v for k, v in ours["meta_net"].items()})
        model.eval()
        with torch.no_grad():
            image = model.image_encoder(images)
            image = image / image.norm(dim=-1, keepdim=True)
            rec["image_features"] = image
            if name == "coop":
                prompts = learner()
                text = model.text_encoder(prompts, model.tokenized_prompts)
                rec["prompts"], rec["text"] = prompts, text / text.norm(dim=-1, keepdim=True)
                rec["logits"] = model(images)
            else:
                rec["meta_net"] = learner.meta_net(image)
                prompts = learner(image)  # (B, C, 77, width)
                text = torch.stack([model.text_encoder(p, model.tokenized_prompts) for p in prompts])
                rec["prompts"], rec["text"] = prompts, text / text.norm(dim=-1, keepdim=True)
                rec["logits"] = model(images)
        learner.train()  # CoCoOp's forward returns the loss in training mode, as its trainer calls it
        optimizer = optim.build_optimizer(learner, cfg.OPTIM)
        schedule = optim.build_lr_scheduler(optimizer, cfg.OPTIM)
        lrs, ctx_after = [], []
        for _ in range(EPOCHS):  # one batch per epoch: the trainer's forward_backward, then update_lr at its end
            lrs.append(optimizer.param_groups[0]["lr"])
            loss = F.cross_entropy(model(images), labels) if name == "coop" else model(images, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            ctx_after.append(learner.ctx.detach().clone())
            schedule.step()
        rec["lrs"], rec["ctx_after_epoch"] = lrs, ctx_after
        if name == "cocoop":
            rec["meta_after"] = {k: v.clone() for k, v in learner.meta_net.state_dict().items()}
        record[name] = rec
    torch.save(record, out / "reference.pt")


def compare(out: Path) -> dict:
    from torch.nn import functional as F

    from benchmarks.methods.common import CLASS_PHRASES, normalised_cls, train_minibatches
    from benchmarks.methods.prompt_learning import CoCoOp, CoOp

    backbone = _backbone(out)
    ref = torch.load(out / "reference.pt", weights_only=False)
    inputs = torch.load(out / "inputs.pt", weights_only=True)
    images, labels = inputs["images"], inputs["labels"]

    def diff(a, b) -> float:
        return float((a.double() - b.double()).abs().max())

    f = normalised_cls(backbone.encode_image(images))
    report: dict = {"arch": ARCH, "classes": [CLASS_PHRASES[c] for c in CLASSES], "batch": len(labels),
                    "epochs": EPOCHS}
    for name, cls in (("coop", CoOp), ("cocoop", CoCoOp)):
        r, method = ref[name], cls(backbone, CLASSES)
        method._build(0)
        method._frozen_text = None
        p = method.prompts
        rep = {"image_features": diff(f, r["image_features"])}
        if name == "cocoop":
            rep["init_ctx_from_words"] = diff(p.ctx[0], r["init_ctx"])
        with torch.no_grad():
            if name == "coop":
                emb = torch.cat([p.base[:, :1], p.ctx.expand(p.n_prompts, -1, -1), p.base[:, 1 + p.n_ctx:]], dim=1)
                rep["prompt_embeddings"] = diff(emb, r["prompts"])
                rep["text_features"] = diff(p(), r["text"])
            else:
                bias = method.meta(f)
                rep["meta_net_output"] = diff(bias, r["meta_net"])
                ctx = p.ctx.expand(p.n_prompts, -1, -1).unsqueeze(0) + bias[:, None, None, :]
                base = p.base.unsqueeze(0).expand(len(f), -1, -1, -1)
                emb = torch.cat([base[:, :, :1], ctx, base[:, :, 1 + p.n_ctx:]], dim=2)
                rep["prompt_embeddings"] = diff(emb, r["prompts"])
                rep["instance_text_features"] = diff(p(bias), r["text"])
            logits = method._logits(f)
            rep["logits"] = diff(logits, r["logits"])
            # theirs: exp of the weights' logit scale, log(100) rounded to fp16 (100.03); ours: the constant 100
            rep["official_logit_scale"] = r["logit_scale"]
            rep["logits_at_the_official_scale"] = diff(logits * r["logit_scale"] / 100.0, r["logits"])
            rep["logits_range"] = [float(logits.min()), float(logits.max())]
        params = list(p.parameters()) + (list(method.meta.parameters()) if name == "cocoop" else [])
        snapshots, lrs = [], []
        original = torch.optim.SGD.step

        def step(self, *a, _lrs=lrs, _original=original, **k):
            _lrs.append(self.param_groups[0]["lr"])
            return _original(self, *a, **k)

        def loss_fn(idx, p=p, method=method, snapshots=snapshots):
            snapshots.append(p.ctx.detach().clone())
            return F.cross_entropy(method._logits(f[idx]), labels[idx])

        torch.optim.SGD.step = step
        try:
            with torch.enable_grad():
                train_minibatches(params, loss_fn, len(labels), epochs=EPOCHS, seed=0, batch_size=len(labels), lr=LR,
                                  weight_decay=WD, sgd_paper=True)
        finally:
            torch.optim.SGD.step = original
        after = snapshots[1:] + [p.ctx.detach().clone()]
        rep["lrs_ours"], rep["lrs_official"] = lrs, r["lrs"]
        rep["lr_max_abs_diff"] = max(abs(a - b) for a, b in zip(lrs, r["lrs"]))
        rep["ctx_after_epoch"] = [diff(a.reshape(b.shape), b) for a, b in zip(after, r["ctx_after_epoch"])]
        rep["ctx_change_per_epoch"] = [diff(a.reshape(b.shape), s.reshape(b.shape)) for a, s, b in
                                       zip(after, snapshots, r["ctx_after_epoch"])]
        if name == "cocoop":
            meta = {k.replace("0.", "linear1.").replace("2.", "linear2."): v for k, v in method.meta.state_dict().items()}
            rep["meta_net_after_training"] = max(diff(meta[k], v) for k, v in r["meta_after"].items())
        report[name] = rep
    print(json.dumps(report, indent=1))
    (out / "compare.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("make", "reference", "compare"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--coop", type=Path, help="checkout of KaiyangZhou/CoOp (reference step)")
    parser.add_argument("--dassl", type=Path, help="checkout of KaiyangZhou/Dassl.pytorch (reference step)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.step == "reference":
        if args.coop is None or args.dassl is None:
            parser.error("reference needs --coop and --dassl")
        reference(out, args.coop.resolve(), args.dassl.resolve())
    else:
        torch.set_grad_enabled(False)
        {"make": make, "compare": compare}[args.step](out)
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a file by the reference interpreter: the project is not imported
        sys.path.pop(0)
    sys.exit(main())
