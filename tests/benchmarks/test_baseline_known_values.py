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


def test_lp_plus_plus_blends_class_text_per_class():
    """``100 (f W^T + alpha * f T^T)``: W = T = I, alpha = (1, 0, 2), f = e3 gives (0, 0, 100 * (1 + 2))."""
    lp = _method(LPPlusPlus)
    lp.weight, lp.text, lp.alpha = nn.Parameter(EYE.clone()), EYE.clone(), nn.Parameter(torch.tensor([1.0, 0.0, 2.0]))
    with torch.no_grad():
        torch.testing.assert_close(lp._logits(EYE[2:]), torch.tensor([[0.0, 0.0, 300.0]]))
        torch.testing.assert_close(lp._logits(EYE[:1]), torch.tensor([[200.0, 0.0, 0.0]]))


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
    ``e2`` for f = e1 gives the direction (0.8, 0.2, 0) / norm."""
    adapter = _method(CLIPAdapter)
    adapter.text = EYE.clone()
    adapter.mlp = lambda f: torch.zeros_like(f)
    torch.testing.assert_close(adapter._logits(EYE[:1]), torch.tensor([[LOGIT_SCALE, 0.0, 0.0]]))
    adapter.mlp = lambda f: EYE[1:2].expand_as(f)
    norm = math.hypot(0.8, 0.2)
    expected = torch.tensor([[0.8 / norm, 0.2 / norm, 0.0]]) * LOGIT_SCALE
    torch.testing.assert_close(adapter._logits(EYE[:1]), expected)
