"""Aggregation over seeds: mean / std / n of each metric and their ``mean ± std`` text."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

import numpy as np


class MetricSummary(TypedDict):
    """Mean/std of one metric over repeated runs (e.g. few-shot seeds)."""

    mean: float
    std: float
    n: int  # number of finite values used for mean/std
    values: list[float]  # all values, in run order, nan for runs that lacked/failed the metric


def _is_number(v: Any) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    return isinstance(v, (int, float, np.integer, np.floating))


def summarize_values(values: Iterable[float]) -> MetricSummary:
    """Nan-aware mean and sample std (``ddof=1``; 0 for a single value; nan for none)."""
    vals = [float(v) for v in values]
    finite = np.asarray([v for v in vals if math.isfinite(v)], np.float64)
    n = int(finite.size)
    mean = float(finite.mean()) if n else float("nan")
    std = float(finite.std(ddof=1)) if n > 1 else (0.0 if n == 1 else float("nan"))
    return MetricSummary(mean=mean, std=std, n=n, values=vals)


def summarize_over_seeds(results: Sequence[Mapping[str, Any]]) -> dict[str, MetricSummary]:
    """Summarise a list of metric dicts (one per seed) into ``{name: MetricSummary}``.

    Only numeric scalar entries are summarised (lists such as ``"notes"``, strings and booleans are
    skipped). A metric missing from some runs counts as ``nan`` for them, so ``values`` always has
    one entry per run and ``n`` says how many were usable. Key order follows first appearance.
    """
    names: list[str] = []
    for r in results:
        for k, v in r.items():
            if k not in names and _is_number(v):
                names.append(k)
    out: dict[str, MetricSummary] = {}
    for k in names:
        out[k] = summarize_values(float(r[k]) if k in r and _is_number(r[k]) else float("nan") for r in results)
    return out


def format_mean_std(summary: Mapping[str, Any], digits: int = 3, show_n: bool = False) -> str:
    """Format a :class:`MetricSummary` as ``"0.812 ± 0.034"`` (``"nan"`` when no value)."""
    n = int(summary.get("n", 0))
    if n == 0 or not math.isfinite(float(summary["mean"])):
        text = "nan"
    else:
        text = f"{float(summary['mean']):.{digits}f} ± {float(summary['std']):.{digits}f}"
    return f"{text} (n={n})" if show_n else text


