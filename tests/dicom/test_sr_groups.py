"""Reports whose measurement groups are encoded as they are built are the reports highdicom builds from the whole tree.

``write_report`` / ``write_viewer_report`` with ``encode_groups=False`` hand every group to highdicom (as the writers
did before); the default encodes each group at once and splices them in (monai_ultraad.dicom.writers.encoded_groups).
The two files must be equal byte for byte, on every real DICOM file of the shared corpus (retired SOP classes,
single-frame sources with several frames, character sets, missing patient attributes) and on a synthetic 41-frame
cine; a splice that loses or reorders a group, or encodes a group in another transfer syntax, differs.
"""

from __future__ import annotations

import csv
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from monai_ultraad.data import default_data_dir
from monai_ultraad.dicom.synthetic import wrap_as_ultrasound
from monai_ultraad.dicom.viewer_sr import write_viewer_report
from monai_ultraad.dicom.writers import (
    AlgorithmInfo,
    FramePrediction,
    UIDFactory,
    encoded_groups,
    write_report,
    write_segmentations,
)

THRESHOLD = 0.5
MAX_FRAMES = 4  # of a long real cine: several groups and the summary (the long cine is the synthetic one)


def _algorithm() -> AlgorithmInfo:
    return AlgorithmInfo(version="0.1.0", backbone="UltraAD-Tiny-ViT", weights_id="random",
                         checkpoint_sha256="cd" * 32, random_weights=True)


def _predictions(rows: int, cols: int, frame_numbers: list[int]) -> list[FramePrediction]:
    yy, xx = np.mgrid[:rows, :cols]
    preds = []
    for i, f in enumerate(frame_numbers):
        heat = np.exp(-((yy - rows * (0.3 + 0.02 * i)) ** 2 + (xx - cols / 2) ** 2) / (2 * (min(rows, cols) / 8) ** 2))
        if i % 3 == 1:
            heat[:] = 0.0  # no lesion: no outline in the viewer report
        p = 0.1 + 0.7 * i / max(len(frame_numbers), 1)
        preds.append(FramePrediction(frame_number=f, heatmap=heat.astype(np.float32), anomaly_score=0.4 + 0.01 * i,
                                     class_probs={"normal": 0.1, "benign": 0.9 - p, "malignant": p}))
    return preds


def _both(source: pydicom.Dataset, preds, folder: Path) -> None:
    _, binary = write_segmentations(source, preds, THRESHOLD, folder / "seg", _algorithm(),
                                             UIDFactory("groups"))
    binary_seg = pydicom.dcmread(binary, defer_size="64 KB")
    files = {}
    for encode in (False, True):
        out = folder / f"encode_{encode}"
        files[encode] = (
            write_report(source, binary_seg, preds, THRESHOLD, out, _algorithm(), UIDFactory("groups"),
                         pixel_spacing_mm=(0.1, 0.2), input_quality="no flags", encode_groups=encode),
            write_viewer_report(source, preds, THRESHOLD, out, _algorithm(), UIDFactory("groups"),
                                encode_groups=encode),
        )
    for whole, encoded in zip(files[False], files[True], strict=True):
        assert (whole is None) == (encoded is None)
        if whole is not None:
            assert whole.read_bytes() == encoded.read_bytes(), f"{whole.name}: encoded groups differ from highdicom's"
    report = hd.sr.srread(files[True][0])  # highdicom reads the spliced report back, every group in it
    groups = report.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(preds)


def _corpus() -> list[str]:
    root = default_data_dir()
    manifest = root / "dicom" / "MANIFEST.csv" if root is not None else None
    if manifest is None or not manifest.is_file():
        return []
    with open(manifest, newline="") as fh:
        return [row["file"] for row in csv.DictReader(fh)]


@pytest.mark.realdata
@pytest.mark.parametrize("name", _corpus() or [pytest.param("-", marks=pytest.mark.skip("no real DICOM corpus"))])
def test_real_file_reports_are_highdicoms(tmp_path, name):
    source = pydicom.dcmread(default_data_dir() / "dicom" / name, defer_size="64 KB")  # as the app reads it
    n = int(source.get("NumberOfFrames") or 1)
    frames = list(range(1, n + 1))[:MAX_FRAMES]
    _both(source, _predictions(int(source.Rows), int(source.Columns), frames), tmp_path)


def test_cine_report_is_highdicoms(tmp_path):
    frames = np.random.default_rng(3).integers(0, 256, (41, 40, 48, 3), dtype=np.uint8)
    source = pydicom.dcmread(wrap_as_ultrasound(None, tmp_path / "cine.dcm", frames=frames))
    _both(source, _predictions(40, 48, list(range(1, 42))), tmp_path)


def test_splice_that_drops_a_group_is_caught(tmp_path, monkeypatch):
    """The comparison above can fail: a splice without the last frame's group gives another file."""
    frames = np.random.default_rng(3).integers(0, 256, (5, 40, 48, 3), dtype=np.uint8)
    source = pydicom.dcmread(wrap_as_ultrasound(None, tmp_path / "cine.dcm", frames=frames))
    add = encoded_groups.EncodedGroups.add

    def add_but_the_fifth(self, group, keep=False):
        if self.encode and self.count == 4 and not keep:
            self.count += 1
            return
        add(self, group, keep)

    monkeypatch.setattr(encoded_groups.EncodedGroups, "add", add_but_the_fifth)
    with pytest.raises(AssertionError, match="encoded groups differ"):
        _both(source, _predictions(40, 48, [1, 2, 3, 4, 5]), tmp_path)
