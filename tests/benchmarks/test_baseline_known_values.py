"""The baselines' scoring rules on cases small enough to check by hand (not only output shapes).

Written against the public classes of ``benchmarks.methods``; each case sets a method's fitted state directly and
compares its logits / probabilities with the paper's formula worked out by hand.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.methods import CLIPAdapter, LinearProbe, LPPlusPlus, TipAdapter
from benchmarks.methods.classifiers import lpplusplus_fit
from benchmarks.methods.common import LOGIT_SCALE, probs_from_logits
from monai_ultraad.constants import CLASS_NAMES

EYE = torch.eye(3)


def _method(cls):
    return cls(backbone=None, class_names=CLASS_NAMES)


def test_probabilities_and_score_from_logits():
    probs, score = probs_from_logits(torch.tensor([[0.0, math.log(2.0), math.log(5.0)]]))
    torch.testing.assert_close(probs, torch.tensor([[1 / 8, 2 / 8, 5 / 8]]))
    torch.testing.assert_close(score, torch.tensor([7 / 8]))  # anomaly score = 1 - P(normal)


def test_tip_adapter_cache_logits():
    """``100 f T^T + alpha exp(-beta (1 - f K^T)) V`` with one key per class, V = I and T = 0."""
    tip = _method(TipAdapter)
    tip.text, tip.keys, tip.values = torch.zeros(3, 3), nn.Parameter(EYE.clone()), EYE.clone()
    logits = tip._logits(EYE[:1], alpha=2.0, beta=1.0)  # f = the normal key
    torch.testing.assert_close(logits, torch.tensor([[2.0, 2 * math.exp(-1), 2 * math.exp(-1)]]))
    tip.text = EYE.clone()
    logits = tip._logits(EYE[2:], alpha=0.0, beta=1.0)  # no cache: zero-shot CLIP, 100 * cosine to each class text
    torch.testing.assert_close(logits, torch.tensor([[0.0, 0.0, LOGIT_SCALE]]))



def test_tip_adapter_search_grid_is_the_official_one():
    """gaopengcuhk/Tip-Adapter ``search_hp`` with search_scale [7, 3], search_step [200, 20]:
    ``i * (scale - 0.1) / step + 0.1`` for i < step, i.e. beta 0.1, 0.1345, ..., 6.9655 and alpha 0.1, ..., 2.855."""
    assert (len(TipAdapter.BETAS), len(TipAdapter.ALPHAS)) == (200, 20)
    assert TipAdapter.BETAS[:2] == pytest.approx((0.1, 0.1345)) and TipAdapter.BETAS[-1] == pytest.approx(6.9655)
    assert TipAdapter.ALPHAS[:2] == pytest.approx((0.1, 0.245)) and TipAdapter.ALPHAS[-1] == pytest.approx(2.855)

def test_lp_plus_plus_blends_class_text_per_class():
    """``f W^T + b + alpha * f T^T`` (no logit scale, as LP++): W = T = I, b = (0, 1, 0), alpha = (1, 0, 2)."""
    lp = _method(LPPlusPlus)
    lp.weight, lp.text, lp.alpha, lp.bias = EYE.clone(), EYE.clone(), torch.tensor([1.0, 0.0, 2.0]), EYE[1].clone()
    torch.testing.assert_close(lp._logits(EYE[2:]), torch.tensor([[0.0, 1.0, 3.0]]))
    torch.testing.assert_close(lp._logits(EYE[:1]), torch.tensor([[2.0, 1.0, 0.0]]))


def test_lp_plus_plus_solver_constants_by_hand():
    """Two shots f = e1 (class 0), e2 (class 1), text rows (0.6, 0.8), (0.8, 0.6): F^T F = I so the W step is
    4 N / 1 = 8; the zero-shot logits f t_c are [[0.6, 0.8], [0.8, 0.6]], so alpha starts at 250 x mean(0.6, 0.6)
    = 150 and its step is N / (4 max_c sum_i (f_i t_c)^2) = 2 / 4 = 0.5; W starts at the per-class sums (I).
    alpha moves only at every 10th step."""
    f, y, text = torch.eye(2), torch.tensor([0, 1]), torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    nine = lpplusplus_fit(f, y, f, y, text, epochs=9)
    assert nine["lr_w"] == pytest.approx(8.0) and nine["lr_alpha"] == pytest.approx(0.5)
    assert nine["init_alpha"] == pytest.approx(150.0)
    torch.testing.assert_close(nine["final_alpha"], torch.full((1, 2), 150.0))
    ten = lpplusplus_fit(f, y, f, y, text, epochs=10)
    assert (ten["final_alpha"] != 150.0).all()


def test_linear_probe_puts_log_probabilities_in_class_order():
    """A class missing from the shots (benign here) gets a very low log-probability, the others keep theirs."""
    probe = _method(LinearProbe)
    log_probs = torch.log(torch.tensor([[0.25, 0.75]]))
    full = probe._full_logits(SimpleNamespace(classes_=np.array([0, 2])), log_probs)
    assert full[0, 0] == pytest.approx(math.log(0.25)) and full[0, 2] == pytest.approx(math.log(0.75))
    assert full[0, 1] <= -1e3
    probs, score = probs_from_logits(full)
    torch.testing.assert_close(probs, torch.tensor([[0.25, 0.0, 0.75]]), atol=1e-6, rtol=0)
    assert float(score) == pytest.approx(0.75)


def test_clip_adapter_residual_ratio():
    """An MLP that outputs zeros leaves ``0.8 f`` -> normalised f: plain zero-shot CLIP logits; an MLP that outputs
    ``e2`` for f = e1 gives the direction (0.8, 0.2, 0) / norm at ratio 0.2, pure e2 at ratio 1."""
    adapter = _method(CLIPAdapter)
    adapter.text, adapter.ratio = EYE.clone(), 0.2
    adapter.mlp = lambda f: torch.zeros_like(f)
    torch.testing.assert_close(adapter._logits(EYE[:1]), torch.tensor([[LOGIT_SCALE, 0.0, 0.0]]))
    adapter.mlp = lambda f: EYE[1:2].expand_as(f)
    norm = math.hypot(0.8, 0.2)
    expected = torch.tensor([[0.8 / norm, 0.2 / norm, 0.0]]) * LOGIT_SCALE
    torch.testing.assert_close(adapter._logits(EYE[:1]), expected)
    adapter.ratio = 1.0
    torch.testing.assert_close(adapter._logits(EYE[:1]), torch.tensor([[0.0, LOGIT_SCALE, 0.0]]))


def test_clip_adapter_searches_every_ratio_and_keeps_the_best(monkeypatch):
    """Each ratio of 0.1 .. 1.0 trains its own adapter; the one with the lowest validation NLL is kept."""
    adapter = _method(CLIPAdapter)
    tried = []

    def fake_train(ratio, *args):
        tried.append(ratio)
        return abs(ratio - 0.7), 10, f"mlp at {ratio}"

    monkeypatch.setattr(adapter, "_train", fake_train)
    monkeypatch.setattr("benchmarks.methods.classifiers.class_text", lambda *a: EYE.clone())
    feats = SimpleNamespace(cls_token=EYE.clone())
    info = adapter.fit(SimpleNamespace(shots=feats, labels=torch.arange(3), val_features=feats,
                                       val_labels=torch.arange(3), seed=0))
    assert tried == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert (info["ratio"], adapter.ratio, adapter.mlp) == (0.7, 0.7, "mlp at 0.7")
