"""The CI smoke benchmark: every method, tiny random backbone, k=4, one seed, real BUS-UCLM and BUS-BRA subsets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import run as bench
from benchmarks.methods import METHODS

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "benchmarks" / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def smoke_run(data_dir, synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke"
    cache = tmp_path_factory.mktemp("bench-cache")
    argv = ["--config", str(SMOKE), "--out", str(out), "--cache-dir", str(cache), "--data-dir", str(data_dir),
            "--target", f"synthetic={synthetic_dataset}"]
    assert bench.main(argv) == 0
    return out, cache, argv


@pytest.mark.realdata
def test_smoke_outputs(smoke_run):
    out, _, _ = smoke_run
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["random_weights"] is True
    summary = results["summary"]
    assert set(summary) == {"bus_uclm_test", "bus_bra", "synthetic"}
    names = {cls.name for cls in METHODS.values()}
    for target in summary:
        assert set(summary[target]) == names, target
    uclm = summary["bus_uclm_test"]
    # in-domain: every method with an image score has a defined image AUROC; classifiers have no pixel metrics
    assert 0.0 <= uclm["UltraAD"]["4"]["image_auroc"]["mean"] <= 1.0
    assert 0.0 <= uclm["UltraAD"]["4"]["pixel_auroc"]["mean"] <= 1.0
    assert "pixel_auroc" not in uclm["linear probe"]["4"]
    assert "cls_auroc_macro" not in uclm["April-GAN"]["4"]
    assert "image_auroc" not in uclm["UltraAD w/o multitask"]["4"]
    # BUS-BRA has no normal images: no image AUROC, but benign vs malignant is defined
    assert summary["bus_bra"]["UltraAD"]["4"]["image_auroc"]["n"] == 0  # undefined: counted, never a number
    assert 0.0 <= summary["bus_bra"]["UltraAD"]["4"]["benign_malignant_auroc"]["mean"] <= 1.0
    md = (out / "results.md").read_text()
    assert "RANDOM WEIGHTS: ACCURACY NOT MEANINGFUL" in md
    sections = {part.split("\n", 1)[0]: part for part in md.split("\n## ")[1:]}
    for target in ("bus_uclm_test", "bus_bra", "synthetic"):
        table = sections[f"{target}, k = 4"]
        assert "\n| UltraAD | " in table and "\n| MVFA | " in table, target
    assert "input / metric resolution" in sections["Methods"]
    # shortcut audit: only where the dataset says which images carry marks / Doppler (BUS-UCLM), every method
    audit = results["shortcut_audit"]
    assert set(audit) == {"bus_uclm_test"} and set(audit["bus_uclm_test"]) == names
    assert 0.0 <= audit["bus_uclm_test"]["UltraAD"]["4"]["marks:image_auroc"]["mean"] <= 1.0
    assert "top1_on_marks" in audit["bus_uclm_test"]["MVFA"]["4"]
    assert "| I-AUROC marks | I-AUROC no marks |" in sections["Shortcut audit: bus_uclm_test, k = 4"]
    for png in ("roc_bus_uclm_test.png", "roc_bus_bra.png", "heatmaps.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 200 and im.size[1] > 200
            assert np.asarray(im.convert("L")).std() > 5  # not blank


@pytest.mark.realdata
def test_smoke_thresholds_and_shots_come_from_training_patients(smoke_run, data_dir):
    out, _, _ = smoke_run
    from monai_ultraad.data import read_dataset

    patients = {str(it["id"]): it["patient"] for it in read_dataset(data_dir / "bus_uclm")}
    for cell_file in (out / "cells").rglob("k4_s0.json"):
        cell = json.loads(cell_file.read_text())
        test_ids = cell["targets"]["bus_uclm_test"]["per_image"]["id"]
        shot_patients = {patients[i] for i in cell["shots"]}
        assert shot_patients.isdisjoint({patients[i] for i in test_ids}), cell_file
        assert cell["threshold_from"] in ("validation Dice", "no heatmap"), cell_file


@pytest.mark.realdata
def test_smoke_resumes_without_recomputing(smoke_run):
    out, _, argv = smoke_run
    cells = sorted((out / "cells").rglob("*.json"))
    assert len(cells) == len(METHODS)
    before = {c: c.stat().st_mtime_ns for c in cells}
    assert bench.main(argv) == 0
    assert {c: c.stat().st_mtime_ns for c in cells} == before


@pytest.mark.realdata
def test_report_only_lists_missing_cells(smoke_run, tmp_path):
    out, _, argv = smoke_run
    partial = tmp_path / "partial"
    partial.mkdir()
    import shutil

    shutil.copytree(out / "cells", partial / "cells")
    shutil.copy(out / "run.json", partial / "run.json")
    shutil.rmtree(partial / "cells" / "mvfa")
    args = list(argv)
    args[args.index("--out") + 1] = str(partial)
    assert bench.main([*args, "--report-only"]) == 0
    results = json.loads((partial / "results.json").read_text())
    assert results["run"]["missing_cells"] == ["mvfa k=4 seed=0"]
    assert "MVFA" not in results["summary"]["bus_uclm_test"]
    assert "**Partial:** 1 cells were not computed" in (partial / "results.md").read_text()
    assert not (partial / "cells" / "mvfa").exists()  # nothing computed
    # the cells' provenance is the run that computed them; the re-rendering is recorded beside it
    original = json.loads((out / "results.json").read_text())
    assert results["run"]["command"] == original["run"]["command"] and "--report-only" not in results["run"]["command"]
    assert "--report-only" in results["run"]["report_rendered"]["command"]
    # the same cells give the same summary whether just computed or read back from their files
    assert results["summary"]["bus_uclm_test"]["UltraAD"] == original["summary"]["bus_uclm_test"]["UltraAD"]


@pytest.mark.realdata
def test_other_configuration_refuses_to_mix_results(smoke_run, tmp_path, caplog):
    _, _, argv = smoke_run
    other = tmp_path / "other.yaml"
    other.write_text(SMOKE.read_text().replace("max_val_per_class: 6", "max_val_per_class: 5"))
    code = bench.main(["--config", str(other)] + argv[2:])
    assert code == 2
    assert "another configuration" in caplog.text


def test_unknown_config_key_is_a_clear_error(tmp_path, caplog):
    bad = tmp_path / "bad.yaml"
    bad.write_text("shots: [4]\nbogus: 1\n")
    assert bench.main(["--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown config keys ['bogus']" in caplog.text


def test_missing_weight_file_is_an_error_not_a_random_fallback(tmp_path, caplog):
    code = bench.main(["--config", str(SMOKE), "--out", str(tmp_path / "o"), "--pretrained", str(tmp_path / "no.pt")])
    assert code == 2
    assert "weight file not found" in caplog.text
    assert not (tmp_path / "o").exists()


def test_summary_is_the_same_from_memory_and_from_cell_files(tmp_path):
    """An undefined metric is NaN in a fresh cell and null in its file: both must summarise as undefined (n=0);
    a not-applicable metric stays absent either way."""
    from benchmarks import protocol, report
    from monai_ultraad.io_utils import to_jsonable

    metrics = {"image_auroc": float("nan"), "pixel_auroc": None, "dice": 0.5, "not_applicable": ["pixel_auroc"]}
    fresh = {("UltraAD", 4, 0): {"targets": {"bus_bra": {"metrics": metrics}}}}
    path = tmp_path / "cell.json"
    protocol.write_cell(path, fresh[("UltraAD", 4, 0)])
    from_file = {("UltraAD", 4, 0): json.loads(path.read_text())}
    assert from_file[("UltraAD", 4, 0)]["targets"]["bus_bra"]["metrics"]["image_auroc"] is None  # null on disk
    a, b = (to_jsonable(report.summarise(c), nan_as_null=True) for c in (fresh, from_file))
    assert a == b
    summary = a["bus_bra"]["UltraAD"]["4"]
    assert summary["image_auroc"]["n"] == 0 and summary["dice"]["mean"] == 0.5 and "pixel_auroc" not in summary
