"""Few-shot CLIP classifiers on the class token: linear probe, LP++, Tip-Adapter(-F), CLIP-Adapter.

They classify the image into the fine-grained classes; their anomaly score is 1 - P(normal). None of them
localises, so their pixel metrics are reported as not applicable.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.nn import functional as F

from benchmarks.methods.base import FitData, Method, MethodCard, Prediction
from benchmarks.methods.common import (
    LOGIT_SCALE,
    class_text,
    normalised_cls,
    probs_from_logits,
    val_nll,
)
from monai_ultraad.networks import VisualFeatures

_CLASSIFIER_SCORE = "1 - P(normal)"


class LinearProbe(Method):
    """CLIP's linear probe (Radford et al., 2021): L2-regularised logistic regression on the normalised class token,
    its regularisation strength C chosen on validation log-likelihood."""

    name = "linear probe"
    card = MethodCard("few-shot classifier", _CLASSIFIER_SCORE, "none", "n/a",
                      "multinomial logistic regression", "Radford et al., CLIP, ICML 2021")
    C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)

    def fit(self, data: FitData) -> dict[str, Any]:
        x, y = normalised_cls(data.shots).numpy(), data.labels.numpy()
        vx, vy = normalised_cls(data.val_features).numpy(), data.val_labels.numpy()
        best = None
        for c in self.C_GRID:
            clf = LogisticRegression(C=c, max_iter=2000, random_state=data.seed).fit(x, y)
            logits = torch.as_tensor(clf.predict_log_proba(vx))
            full = self._full_logits(clf, logits)
            nll = val_nll(full, torch.as_tensor(vy))
            if best is None or nll < best[0]:
                best = (nll, c, clf)
        self.clf = best[2]
        return {"C": best[1], "val_nll": best[0]}

    def _full_logits(self, clf: LogisticRegression, log_probs: torch.Tensor) -> torch.Tensor:
        """Log-probabilities in CLASS_NAMES order (a class missing from the shots gets -inf)."""
        out = torch.full((log_probs.shape[0], len(self.class_names)), -1e4, dtype=torch.float64)
        out[:, torch.as_tensor(clf.classes_)] = log_probs.double()
        return out

    @torch.no_grad()
    def predict(self, features: VisualFeatures) -> Prediction:
        log_probs = torch.as_tensor(self.clf.predict_log_proba(normalised_cls(features).numpy()))
        probs, score = probs_from_logits(self._full_logits(self.clf, log_probs))
        return Prediction(score, probs)


def lpplusplus_fit(f: torch.Tensor, y: torch.Tensor, vf: torch.Tensor, vy: torch.Tensor, text: torch.Tensor,
                   epochs: int = 300, seed: int = 0) -> dict[str, Any]:
    """LP++'s solver as its official code runs it (FereshteShakeri/FewShot-CLIP-Strong-Baseline,
    ``methods/linear_probe_p2.py``), on normalised features ``f`` (N, D) with labels ``y``, validation ``vf``/``vy``
    and normalised class text ``text`` (C, D) (the official code's shots-per-class factors cancel out).

    ``logits = f W^T + b + (f T^T) * alpha`` with one ``alpha`` per class. ``W`` starts at the per-class SUM of the
    shots' features, ``b`` at PyTorch's default ``nn.Linear`` initialisation (drawn from ``seed``), every
    ``alpha`` at 250 x the mean over classes of the shots' zero-shot cosine with their own class. Full-batch steps:
    (W, b) by SGD (momentum 0.9) at the data-driven step ``4 N / lambda_max(F^T F)``; ``alpha`` every 10th step
    by plain gradient descent at ``N / (4 max_c sum_i (f_i . t_c)^2)`` on its gradient accumulated since the start
    (the official code never resets it). The state after the step with the best validation accuracy (ties: the
    later step) is returned: ``weight``, ``bias``, ``alpha``, ``epoch`` (0-based), ``val_accuracy``; and the
    last step's as ``final_weight``, ``final_bias``, ``final_alpha``."""
    n, classes = len(y), text.shape[0]
    one_hot = F.one_hot(y, classes).to(f.dtype)
    text_t = text.T.contiguous()  # (D, C) as the official code holds it: the same products, the same rounding
    zero_shot = f @ text_t  # (N, C)
    # in the official code's precisions (fp32 statistics, the alpha mean in fp64): 300 steps at these step
    # sizes amplify a last-bit difference
    init_alpha = (250.0 * ((one_hot * zero_shot).sum(0) / one_hot.sum(0)).double()).mean()
    lr_w = 4.0 * n / float(torch.linalg.eigvalsh((f.T @ f).double()).max())
    lr_alpha = n / ((zero_shot ** 2).sum(0).max() * 4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = nn.Linear(f.shape[1], classes, bias=True)
    weight, bias = nn.Parameter(one_hot.T @ f), nn.Parameter(linear.bias.detach().clone())
    alpha = (init_alpha * torch.ones(1, classes, dtype=f.dtype)).requires_grad_(True)
    optimizer = torch.optim.SGD([weight, bias], lr_w, momentum=0.9)
    val_zero_shot = vf @ text_t
    best: dict[str, Any] = {"val_accuracy": -1.0}
    for epoch in range(epochs):
        loss = F.cross_entropy(F.linear(f, weight, bias) + torch.ones(n, 1, dtype=f.dtype) @ alpha * zero_shot, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            alpha.data -= lr_alpha * alpha.grad.data
        with torch.no_grad():
            logits = F.linear(vf, weight, bias) + torch.ones(len(vy), 1, dtype=f.dtype) @ alpha * val_zero_shot
            accuracy = float((logits.argmax(1) == vy).float().mean())
        if accuracy >= best["val_accuracy"]:
            best = {"val_accuracy": accuracy, "epoch": epoch, "weight": weight.detach().clone(),
                    "bias": bias.detach().clone(), "alpha": alpha.detach().clone()}
    final = {"final_weight": weight.detach(), "final_bias": bias.detach(), "final_alpha": alpha.detach()}
    return {**best, **final, "init_alpha": float(init_alpha), "lr_w": lr_w, "lr_alpha": float(lr_alpha)}


class LPPlusPlus(Method):
    """LP++ (Huang et al., CVPR 2024): a linear probe blended class-wise with the zero-shot text logits,
    ``logits = f W^T + b + alpha_c (f t_c)``, fitted by the official code's solver (:func:`lpplusplus_fit`: 300
    full-batch steps, data-driven step sizes, best step on validation accuracy). Parity with the official code:
    ``python -m benchmarks.lpplusplus_parity --reference <checkout>``."""

    name = "LP++"
    card = MethodCard("few-shot classifier", _CLASSIFIER_SCORE, "none", "n/a",
                      "text-blended linear probe (official solver)", "Huang et al., LP++, CVPR 2024",
                      notes=["no image augmentation (official: the shots' features from one random-crop/flip pass)",
                             "fp32 (official: CLIP's fp16 features and one-hot)",
                             ("validation accuracy picks the step, as in the official code (the other baselines "
                              "use validation log-likelihood)")])
    EPOCHS = 300

    def fit(self, data: FitData) -> dict[str, Any]:
        f, y = normalised_cls(data.shots), data.labels
        self.text = class_text(self.backbone, self.class_names)
        fitted = lpplusplus_fit(f, y, normalised_cls(data.val_features), data.val_labels, self.text, self.EPOCHS,
                                data.seed)
        self.weight, self.bias, self.alpha = fitted["weight"], fitted["bias"], fitted["alpha"]
        return {k: (float(v) if isinstance(v, float) else v) for k, v in fitted.items()
                if k in ("epoch", "val_accuracy", "init_alpha", "lr_w", "lr_alpha")}

    def _logits(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.weight.T + self.bias + self.alpha * (f @ self.text.T)

    @torch.no_grad()
    def predict(self, features: VisualFeatures) -> Prediction:
        probs, score = probs_from_logits(self._logits(normalised_cls(features)))
        return Prediction(score, probs)


class TipAdapter(Method):
    """Tip-Adapter (Zhang et al., ECCV 2022; gaopengcuhk/Tip-Adapter): zero-shot CLIP logits plus a key-value cache
    of the shots, ``100 f T^T + alpha exp(-beta (1 - f K^T)) V``. ``alpha`` and ``beta`` are searched on the
    validation set over the official grid (beta: 200 steps over [0.1, 7), alpha: 20 steps over [0.1, 3)).

    ``finetune=True`` gives Tip-Adapter-F: the keys become a linear layer (initialised with the shots' features, not
    renormalised while training) trained with AdamW (lr 1e-3, eps 1e-4) under a cosine schedule over 20 epochs of
    batch 256 at the official initial ``beta = 1``, ``alpha = 1.17``; the epoch with the best validation accuracy is
    kept (official: best test accuracy), then ``alpha``/``beta`` are searched as above."""

    name = "Tip-Adapter"
    finetune = False
    card = MethodCard("few-shot classifier", _CLASSIFIER_SCORE, "none", "n/a",
                      "zero-shot text + training-free shot cache", "Zhang et al., Tip-Adapter, ECCV 2022",
                      notes=[("alpha/beta searched on validation log-likelihood over the official grid (official: "
                             "accuracy, on a validation split where the dataset has one)")])
    BETAS = tuple(i * (7.0 - 0.1) / 200 + 0.1 for i in range(200))
    ALPHAS = tuple(i * (3.0 - 0.1) / 20 + 0.1 for i in range(20))
    INIT_ALPHA, INIT_BETA, EPOCHS, BATCH, LR = 1.17, 1.0, 20, 256, 1e-3

    def _logits(self, f: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        affinity = f @ self.keys.T
        return LOGIT_SCALE * f @ self.text.T + alpha * torch.exp(-beta * (1.0 - affinity)) @ self.values

    def _finetune(self, f: torch.Tensor, y: torch.Tensor, vf: torch.Tensor, vy: torch.Tensor, seed: int) -> dict:
        optimizer = torch.optim.AdamW([self.keys], lr=self.LR, eps=1e-4)
        batches = -(-len(y) // self.BATCH)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.EPOCHS * batches)
        generator = torch.Generator().manual_seed(seed)
        best = (-1.0, 0, self.keys.detach().clone())
        for epoch in range(1, self.EPOCHS + 1):
            for idx in torch.randperm(len(y), generator=generator).split(self.BATCH):
                loss = F.cross_entropy(self._logits(f[idx], self.INIT_ALPHA, self.INIT_BETA), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            with torch.no_grad():
                acc = float((self._logits(vf, self.INIT_ALPHA, self.INIT_BETA).argmax(-1) == vy).float().mean())
            if acc > best[0]:
                best = (acc, epoch, self.keys.detach().clone())
        with torch.no_grad():
            self.keys.copy_(best[2])
        return {"best_epoch": best[1], "val_accuracy": best[0], "final_loss": float(loss.detach())}

    def fit(self, data: FitData) -> dict[str, Any]:
        f, y = normalised_cls(data.shots), data.labels
        vf, vy = normalised_cls(data.val_features), data.val_labels
        self.text = class_text(self.backbone, self.class_names)
        self.values = F.one_hot(y, len(self.class_names)).float()
        self.keys = nn.Parameter(f.clone())
        info: dict[str, Any] = self._finetune(f, y, vf, vy, data.seed) if self.finetune else {}
        with torch.no_grad():  # the two logit terms once; the 4000 (alpha, beta) pairs only recombine them
            clip_logits, distance = LOGIT_SCALE * vf @ self.text.T, 1.0 - vf @ self.keys.T
            scored = [(val_nll(clip_logits + a * torch.exp(-b * distance) @ self.values, vy), a, b)
                      for a, b in itertools.product(self.ALPHAS, self.BETAS)]
        nll, self.alpha, self.beta = min(scored)
        return {**info, "alpha": self.alpha, "beta": self.beta, "val_nll": nll}

    @torch.no_grad()
    def predict(self, features: VisualFeatures) -> Prediction:
        probs, score = probs_from_logits(self._logits(normalised_cls(features), self.alpha, self.beta))
        return Prediction(score, probs)


class TipAdapterF(TipAdapter):
    name = "Tip-Adapter-F"
    finetune = True
    card = MethodCard("few-shot classifier", _CLASSIFIER_SCORE, "none", "n/a",
                      "zero-shot text + fine-tuned shot cache (AdamW, cosine, 20 epochs)",
                      "Zhang et al., Tip-Adapter, ECCV 2022",
                      notes=["best epoch by validation accuracy (official: test accuracy)",
                             "no augmented cache (official: 10 random-crop views per shot averaged into the keys)",
                             ("trained on the shots' fixed features (official: freshly augmented crops and flips "
                              "re-encoded every epoch)"),
                             "float32 (official: float16 on the GPU)",
                             *TipAdapter.card.notes])


class CLIPAdapter(Method):
    """CLIP-Adapter (Gao et al., IJCV 2023; gaopengcuhk/CLIP-Adapter ``clip_adapter.py``): a bottleneck MLP
    (reduction 4, no biases, ReLU after both layers) on the image feature, blended residually
    ``alpha * mlp(f) + (1 - alpha) * f``, renormalised and compared with the class text at CLIP's logit scale;
    trained with cross-entropy by the CoOp (Dassl) recipe the official code runs under: SGD momentum 0.9, weight
    decay 5e-4, batch 32, cosine over 200 epochs after one warm-up epoch at a constant 1e-5.

    The paper tunes the residual ratio per dataset (0.2 on ImageNet, up to 0.6 on fine-grained sets); here it is
    searched on validation log-likelihood over 0.1, 0.2, ..., 1.0 (as the LP++ authors' re-implementation does,
    on accuracy), each ratio training its own adapter; the epoch is the best of every 10 on validation."""

    name = "CLIP-Adapter"
    card = MethodCard("few-shot classifier", _CLASSIFIER_SCORE, "none", "n/a",
                      "residual MLP adapter on the class token", "Gao et al., CLIP-Adapter, IJCV 2023",
                      notes=[("residual ratio searched on validation log-likelihood over 0.1..1.0 (paper: tuned per "
                              "dataset; official code: 0.2 fixed)"),
                             "best of every 10 epochs on validation log-likelihood (official: the last epoch)",
                             "no image augmentation (official: random resized crops and flips, features per epoch)",
                             ("schedule: CoOp's Dassl config (SGD 2e-3, cosine, 1 warm-up epoch at 1e-5, batch 32, 200 "
                              "epochs, weight decay 5e-4); the official repository ships no config, its README runs "
                              "CoOp's command (the LP++ authors' re-implementation: lr 1e-2)")])
    RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 11))
    EPOCHS, BATCH, LR, WEIGHT_DECAY = 200, 32, 2e-3, 5e-4

    def _logits(self, f: torch.Tensor, mlp: nn.Module | None = None, ratio: float | None = None) -> torch.Tensor:
        mlp, ratio = (self.mlp, self.ratio) if mlp is None else (mlp, ratio)
        adapted = F.normalize(ratio * mlp(f) + (1 - ratio) * f, dim=-1)
        return LOGIT_SCALE * adapted @ self.text.T

    def _adapter(self, dim: int, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Linear(dim, dim // 4, bias=False), nn.ReLU(inplace=True),
                                 nn.Linear(dim // 4, dim, bias=False), nn.ReLU(inplace=True))

    def _train(self, ratio: float, f, y, vf, vy, seed: int) -> tuple[float, int, nn.Module]:
        """One adapter at ``ratio``: (best validation NLL, its epoch, the adapter at that epoch)."""
        mlp = self._adapter(f.shape[1], seed)
        optimizer = torch.optim.SGD(mlp.parameters(), lr=self.LR, momentum=0.9, weight_decay=self.WEIGHT_DECAY)
        generator = torch.Generator().manual_seed(seed)
        best = (float("inf"), 0, None)
        for epoch in range(1, self.EPOCHS + 1):
            for group in optimizer.param_groups:  # Dassl: epoch 1 at a constant 1e-5, then the cosine from LR
                group["lr"] = 1e-5 if epoch == 1 else self.LR * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / self.EPOCHS))
            for idx in torch.randperm(len(y), generator=generator).split(self.BATCH):
                loss = F.cross_entropy(self._logits(f[idx], mlp, ratio), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if epoch % 10 == 0:
                with torch.no_grad():
                    nll = val_nll(self._logits(vf, mlp, ratio), vy)
                if nll < best[0]:
                    best = (nll, epoch, {k: v.clone() for k, v in mlp.state_dict().items()})
        mlp.load_state_dict(best[2])
        return best[0], best[1], mlp

    def fit(self, data: FitData) -> dict[str, Any]:
        f, y = normalised_cls(data.shots), data.labels
        vf, vy = normalised_cls(data.val_features), data.val_labels
        self.text = class_text(self.backbone, self.class_names)
        runs = [(*self._train(r, f, y, vf, vy, data.seed), r) for r in self.RATIOS]
        nll, epoch, self.mlp, self.ratio = min(runs, key=lambda run: run[0])
        return {"ratio": self.ratio, "epochs": epoch, "val_nll": nll}

    @torch.no_grad()
    def predict(self, features: VisualFeatures) -> Prediction:
        probs, score = probs_from_logits(self._logits(normalised_cls(features)))
        return Prediction(score, probs)
