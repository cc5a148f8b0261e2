"""The shortcut audit on constructed data: a method that reads the marks must show it in the split columns and in
where its maps peak; the report must carry the columns."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import report
from benchmarks.shortcut_audit import AuditData, ShortcutAudit, audit_data, audit_summary, top_fraction_on

CLASSES = ("normal", "benign", "malignant")


def test_top_fraction_on_marks():
    heat = np.zeros((20, 20))
    region = np.zeros((20, 20), bool)
    region[:2, :2] = True
    heat[0, 0] = heat[1, 1] = heat[0, 1] = heat[1, 0] = 1.0  # top-1 % of 400 px = 4 px, all on the mark
    assert top_fraction_on(heat, region) == 1.0
    assert top_fraction_on(heat[::-1], region) == 0.0
    with pytest.raises(ValueError):
        top_fraction_on(heat, region[:10])


def _gate(marked: set[str]):
    """A stand-in for the input gate: marks (a 2x2 glyph at the top-left) on the images named in ``marked``."""

    def gate(path):
        mask = np.zeros((16, 16), bool)
        if path in marked:
            mask[:2, :2] = True
        det = lambda flagged, m: SimpleNamespace(flagged=flagged, mask=m)
        return SimpleNamespace(detections={"marks": det(path in marked, mask),
                                           "colour_overlay": det(False, np.zeros((16, 16), bool))})

    return gate


def test_subsets_from_columns_or_detectors():
    items = [{"id": "a", "image": "a", "marks": "True", "doppler": "False"},
             {"id": "b", "image": "b", "marks": "False", "doppler": "True"}]
    data = audit_data(items, gate=_gate({"b"}))  # the detector disagrees with the column on both images
    assert data.source.startswith("dataset columns")
    assert data.subsets["marks"] == {"a"} and data.subsets["no_marks"] == {"b"} and data.subsets["doppler"] == {"b"}
    assert set(data.marks_masks) == {"b"}  # where maps peak is checked against *detected* marks
    unlabelled = audit_data([{k: v for k, v in it.items() if k in ("id", "image")} for it in items], gate=_gate({"b"}))
    assert unlabelled.source == "detectors" and unlabelled.subsets["marks"] == {"b"}


def _cheating_cell():
    """8 images; marks on 4 (2 normal, 2 lesion). The 'method' separates the classes perfectly where marks are and
    inversely where they are not, and its maps peak on the marks."""
    ids = [f"i{i}" for i in range(8)]
    labels = np.array([0, 0, 1, 2, 0, 0, 1, 2])
    marked = {"i0", "i1", "i2", "i3"}
    data = AuditData({"marks": marked, "no_marks": set(ids) - marked, "doppler": set(), "no_doppler": set(ids)},
                     {i: np.pad(np.ones((2, 2), bool), ((0, 14), (0, 14))) for i in marked})
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.9, 0.8, 0.1, 0.2])
    probs = np.stack([1 - scores, scores / 2, scores / 2], 1)
    maps = []
    for i in ids:
        m = np.random.default_rng(int(i[1:])).uniform(0, 0.5, (16, 16))
        if i in marked:
            m[:2, :2] = 1.0
        maps.append(m)
    audit = ShortcutAudit(data, 0.5, CLASSES)
    audit.update(ids[:5], probs[:5], scores[:5], labels[:5], maps[:5], [None] * 5)  # two batches, as the protocol
    audit.update(ids[5:], probs[5:], scores[5:], labels[5:], maps[5:], [None] * 3)
    return audit.compute()


def test_audit_exposes_a_marks_shortcut():
    result = _cheating_cell()
    assert result["subsets"]["marks"]["image_auroc"] == 1.0
    assert result["subsets"]["no_marks"]["image_auroc"] == 0.0
    assert result["subsets"]["doppler"] == {"n_images": 0}
    assert result["top1_on_marks"] == pytest.approx(1.0 * 3 / 3)  # 16*16 px: top-1 % = 3 px, all on the mark
    assert result["n_maps_checked"] == 4


def test_report_carries_the_split_columns(tmp_path):
    audit = _cheating_cell()
    metrics = {"image_auroc": 0.5, "not_applicable": [], "shortcut_audit": audit}
    per_image = {"id": ["i0", "i1"], "label": [0, 1], "anomaly_score": [0.1, 0.9], "class_probs": [None, None]}
    cells = {("UltraAD", 4, s): {"targets": {"bus_uclm_test": {"metrics": metrics, "per_image": per_image}},
                                 "fit": {}, "fit_seconds": 1.0, "threshold": 0.5, "threshold_from": "validation Dice"}
             for s in (0, 1)}
    summary = audit_summary(cells)
    row = summary["bus_uclm_test"]["UltraAD"]["4"]
    assert row["marks:image_auroc"]["mean"] == 1.0 and row["no_marks:image_auroc"]["mean"] == 0.0
    run = {"name": "t", "random_weights": True, "backbone": {"model_name": "tiny", "weights_id": "random",
           "image_size": 64, "feature_layers": [1]}, "shots": [4], "seeds": [0, 1], "split_seed": 0,
           "test_fraction": 0.3, "max_val_per_class": 5, "train_dataset": "bus_uclm",
           "targets": {"bus_uclm_test": "in-domain"}, "command": "x", "host": "h", "started": "now",
           "versions": {"torch": "t", "open_clip": "o"}}
    report.write_all(tmp_path, run, cells, {}, [], {}, CLASSES)
    md = (tmp_path / "results.md").read_text()
    section = md.split("## Shortcut audit: bus_uclm_test, k = 4")[1]
    assert "| I-AUROC marks | I-AUROC no marks |" in section and "top-1 % on marks" in section
    assert "| UltraAD | 1.000 ± 0.000 | 0.000 ± 0.000 |" in section
    assert "marks: 4, no_marks: 4, doppler: 0, no_doppler: 8 images" in section
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["shortcut_audit"]["bus_uclm_test"]["UltraAD"]["4"]["top1_on_marks"]["mean"] == 1.0


def test_heatmap_grid_flags(tmp_path):
    """The grid labels an image from the dataset's columns, else from the input gate on the file."""
    import sys
    from pathlib import Path

    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quality"))
    from synthetic import bmode, draw_cross

    assert report.image_flags({"marks": "True", "doppler": "False", "image": "unused"}) == ["marks"]
    Image.fromarray(draw_cross(bmode(seed=3), (90, 120))).save(tmp_path / "cross.png")
    Image.fromarray(bmode(seed=3)).save(tmp_path / "plain.png")
    assert report.image_flags({"image": str(tmp_path / "cross.png")}) == ["marks"]
    assert report.image_flags({"image": str(tmp_path / "plain.png")}) == []
