"""A cine's SEGs built by highdicom a chunk of frames at a time are the SEGs highdicom builds from the whole loop.

The reference is highdicom itself: ``write_segmentations(..., chunk_frames=None)`` hands the whole loop to one
highdicom constructor (as the writer did before it streamed). The chunked objects must equal it byte for byte: same
per-frame functional groups, same kept FRACTIONAL frames (highdicom's ``omit_empty_frames``, here with a whole chunk of
empty frames and a frame whose values all round to 0), same bit-packed BINARY pixels across chunk borders (a frame of
odd size, so frames do not end on byte boundaries) and the same pad byte.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from monai_ultraad.dicom.synthetic import wrap_as_ultrasound
from monai_ultraad.dicom.writers import AlgorithmInfo, FramePrediction, UIDFactory, write_segmentations
from monai_ultraad.dicom.writers import seg as seg_module
from monai_ultraad.heatmap_spool import HeatmapSpool

ROWS, COLS = 37, 45  # 1665 pixels: odd, so BINARY frames share bytes and an odd Pixel Data gets highdicom's pad
FRAMES = 41  # chunks of 16, 16 and 9
THRESHOLD = 0.4


def _algorithm() -> AlgorithmInfo:
    return AlgorithmInfo(version="0.1.0", backbone="UltraAD-Tiny-ViT", weights_id="random",
                         checkpoint_sha256="ab" * 32, random_weights=True)


def _predictions(frame_numbers: list[int]) -> list[FramePrediction]:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:ROWS, :COLS]
    preds = []
    for i, f in enumerate(frame_numbers):
        heat = np.exp(-((yy - ROWS * (0.2 + 0.015 * i)) ** 2 + (xx - COLS / 2) ** 2) / 40.0).astype(np.float32)
        heat *= rng.uniform(0.3, 1.0)
        if 16 <= i < 32:
            heat[:] = 0.0  # the whole second chunk is empty: highdicom omits it from the FRACTIONAL SEG
        if i == 5:
            heat[:] = 0.001  # not zero, but every value rounds to 0 of 255: highdicom omits it too
        preds.append(FramePrediction(frame_number=f, heatmap=heat, anomaly_score=float(heat.max()),
                                     class_probs={"normal": 0.2, "benign": 0.5, "malignant": 0.3}))
    return preds


@pytest.fixture(scope="module")
def cine(tmp_path_factory) -> pydicom.Dataset:
    folder = tmp_path_factory.mktemp("cine")
    frames = np.random.default_rng(1).integers(0, 256, (FRAMES, ROWS, COLS, 3), dtype=np.uint8)
    return pydicom.dcmread(wrap_as_ultrasound(None, folder / "cine.dcm", frames=frames))


def _write(source, preds, folder: Path, chunk_frames):
    return write_segmentations(source, preds, THRESHOLD, folder, _algorithm(), UIDFactory("chunks"),
                               chunk_frames=chunk_frames)


@pytest.mark.parametrize("frame_numbers", [list(range(1, FRAMES + 1)), list(range(1, FRAMES + 1, 2))],
                         ids=["every frame", "every other frame"])
def test_chunked_segs_are_highdicoms_whole_loop_segs(cine, tmp_path, frame_numbers):
    preds = _predictions(frame_numbers)
    whole = _write(cine, preds, tmp_path / "whole", None)
    chunked = _write(cine, preds, tmp_path / "chunked", 16)
    for a, b in zip(whole, chunked, strict=True):
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes(), f"{a.name}: chunked object differs from highdicom's whole-loop one"
    fractional = pydicom.dcmread(chunked[0])
    kept = len([p for i, p in enumerate(preds) if not (16 <= i < 32 or i == 5)])
    assert int(fractional.NumberOfFrames) == kept < len(preds)  # the omitted frames are really omitted
    assert int(pydicom.dcmread(chunked[1]).NumberOfFrames) == len(preds)

    # highdicom reads them back: the BINARY masks and FRACTIONAL values per source frame are the heatmaps'
    binary = hd.seg.segread(chunked[1])
    pixels = binary.pixel_array  # (frames, rows, cols): frame k is the k-th prediction
    expected = np.stack([np.clip(p.heatmap, 0, 1) >= THRESHOLD for p in preds]).astype(np.uint8)
    np.testing.assert_array_equal(pixels, expected)
    values = hd.seg.segread(chunked[0]).pixel_array
    kept_preds = [p for i, p in enumerate(preds) if not (16 <= i < 32 or i == 5)]
    np.testing.assert_array_equal(values, np.stack([np.around(p.heatmap * 255.0).astype(np.uint8) for p in kept_preds]))


def test_spooled_heatmaps_give_the_same_segs(cine, tmp_path):
    preds = _predictions(list(range(1, FRAMES + 1)))
    in_memory = _write(cine, preds, tmp_path / "memory", 16)
    with HeatmapSpool(tmp_path) as spool:
        spooled = [spool.spool(p) for p in preds]
        from_disk = _write(cine, spooled, tmp_path / "spool", 16)
    for a, b in zip(in_memory, from_disk, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == []  # the spool left no file


def test_chunks_that_omit_empty_frames_per_chunk_would_differ(cine, tmp_path, monkeypatch):
    """The test above can fail: left to decide per chunk (an all-empty chunk keeps all its frames), the FRACTIONAL
    SEG is no longer highdicom's."""
    preds = _predictions(list(range(1, FRAMES + 1)))
    whole = _write(cine, preds, tmp_path / "whole", None)
    monkeypatch.setattr(seg_module, "_fractional_frames_kept", lambda preds: list(range(len(preds))))
    chunked = _write(cine, preds, tmp_path / "chunked", 16)
    assert whole[0].read_bytes() != chunked[0].read_bytes()
    assert whole[1].read_bytes() == chunked[1].read_bytes()  # the BINARY SEG keeps every frame either way


def test_chunk_size_must_keep_binary_frames_byte_aligned(cine, tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        _write(cine, _predictions([1, 2, 3]), tmp_path, 12)
