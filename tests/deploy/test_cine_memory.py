"""A cine loop's memory does not grow with its length, through the whole per-source path of the app.

The app's operators (selector, region crop, UltraAD, SEG, SR, overlay, publisher) are driven in this process, one
source at a time as the app chains them, under tracemalloc, on synthetic cines of N and 4N frames; each step's peak is
compared. No step may grow by anything proportional to the frame size: the heatmaps are spooled to disk
(monai_ultraad.heatmap_spool), highdicom builds the SEGs a chunk of frames at a time
(monai_ultraad.dicom.writers.seg.SEG_CHUNK_FRAMES; N is a whole chunk, so the comparison sees per-frame growth only)
and the overlay frames are spooled as they are rendered. What may grow is the objects' own per-frame metadata (a SEG
frame's functional group, its encoded SR measurement groups, a prediction record), budgeted per frame. Holding the
loop's heatmaps (2 bytes a pixel), the SEG's float32 input or encoded frames, the overlay frames, the decoded frames or
the SR's measurement groups as highdicom objects (about 0.3 MB a frame, monai_ultraad.dicom.writers.encoded_groups)
breaks it.
"""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

from monai_ultraad.dicom.synthetic import wrap_as_ultrasound

REPO = Path(__file__).resolve().parents[2]
# Frames large enough that even a 2-frame source's Pixel Data exceeds the 64 kB from which the writers' pydicom reads
# of the source defer it (operators._dicom_outputs.source_dataset).
ROWS, COLS = 96, 128
# Bounded by design, but up to a count that short loops do not reach: the frames scored together (batch), those the
# input gate checks and the SEG frames highdicom builds at a time (a chunk). The shortest loop is one full chunk, and
# batch and gate fit in it, so that the comparison sees per-frame growth only.
BATCH = GATE_FRAMES = 2
SHORT_LOOP = 16  # = SEG_CHUNK_FRAMES (checked below)
# Per-frame growth allowed in each step (see the module docstring): (bytes per frame pixel, bytes per frame). A frame
# here is 12288 pixels: its float16 heatmap alone is 24.6 kB, so any per-pixel growth exceeds the budget.
BUDGETS = {
    "ultraad_inference": (0, 12_000),  # the frame's prediction record (run report); its heatmap is on disk
    "seg_writer": (0, 20_000),  # the frame's functional groups in the two SEGs (and one viewer SEG at a time)
    "sr_writer": (0, 60_000),  # the frame's encoded group in the two reports (13 kB each, copied once more as the
    # file is written), and the BINARY SEG's functional group as the report reads it
    "overlay_writer": (0, 10_000),  # nothing: frames are rendered, spooled to disk and dropped one at a time
}


class _Port:
    """Stands in for an operator's input and output ports: holds the one SourceWork passed on."""

    def __init__(self, value=None) -> None:
        self.value = value

    def receive(self, name):
        return self.value

    def emit(self, value, name) -> None:
        self.value = value


@pytest.fixture
def source_chain(checkpoint, tmp_path, monkeypatch):
    """``run(path)`` -> the run report after ``path`` went through the app's per-source chain in this process."""
    monkeypatch.syspath_prepend(str(REPO / "deploy_app"))
    import operators.ultraad_inference as inference_step
    from monai.deploy.core import Application
    from operators.output_folder import OutputFolder
    from operators.overlay_writer import OverlayWriterOperator
    from operators.publisher import PublisherOperator
    from operators.region_crop import RegionCropOperator
    from operators.run_report import RunReport
    from operators.seg_writer import SegWriterOperator
    from operators.source_work import SourceWork
    from operators.sr_writer import SRWriterOperator
    from operators.study_loader import InFlight
    from operators.ultraad_inference import UltraADInferenceOperator
    from operators.ultrasound_selector import UltrasoundSelectorOperator

    gate_positions = inference_step.gate_positions
    monkeypatch.setattr(inference_step, "gate_positions", lambda n: gate_positions(n, max_frames=GATE_FRAMES))
    app = Application()
    output = OutputFolder.open(tmp_path / "out")
    report, in_flight = RunReport(), InFlight()
    chain = [
        UltrasoundSelectorOperator(app, name="ultrasound_selector"),
        RegionCropOperator(app, name="region_crop"),
        UltraADInferenceOperator(app, model_path=checkpoint, allow_random_init=True, batch_size=BATCH,
                                 name="ultraad_inference"),
        SegWriterOperator(app, output=output, uid_seed="memory", name="seg_writer"),
        SRWriterOperator(app, output=output, uid_seed="memory", name="sr_writer"),
        OverlayWriterOperator(app, output=output, uid_seed="memory", name="overlay_writer"),
        PublisherOperator(app, output=output, report=report, in_flight=in_flight, name="publisher"),
    ]

    def run(path: Path, peaks: dict | None = None):
        """The source through the chain; with ``peaks``, the peak memory each budgeted step allocates (tracemalloc,
        started for the step: what it adds to what earlier steps hold)."""
        port = _Port(SourceWork(path, path.name))
        in_flight.count += 1
        for operator in chain:
            out = _Port()
            traced = peaks is not None and operator.name in BUDGETS
            if traced:
                tracemalloc.start()
            try:
                operator.compute(port, out, None)
                if traced:
                    peaks[operator.name] = tracemalloc.get_traced_memory()[1]
            finally:
                if traced:
                    tracemalloc.stop()
            port = out
        return report

    yield run
    output.close()


def _cine(folder: Path, n: int) -> Path:
    frames = np.random.default_rng(n).integers(0, 256, (n, ROWS, COLS, 3), dtype=np.uint8)
    return Path(wrap_as_ultrasound(None, folder / f"cine_{n}.dcm", frames=frames))


def test_cine_memory_does_not_grow_with_loop_length(source_chain, tmp_path):
    from monai_ultraad.dicom.writers.seg import SEG_CHUNK_FRAMES

    assert SHORT_LOOP == SEG_CHUNK_FRAMES and BATCH <= SHORT_LOOP and GATE_FRAMES <= SHORT_LOOP
    n = SHORT_LOOP
    sources = {k: _cine(tmp_path, k) for k in (2, n, 4 * n)}
    peaks: dict[int, dict[str, int]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source_chain(sources[2])  # model loading and highdicom's tables: once per process, not per frame
        for k in (n, 4 * n):
            peaks[k] = {}
            report = source_chain(sources[k], peaks[k])
    assert set(report.processed) == {p.name for p in sources.values()}, report.failed  # all the way through
    over = []
    for step, (per_pixel, per_frame) in BUDGETS.items():
        growth = (peaks[4 * n][step] - peaks[n][step]) / (3 * n)
        budget = per_pixel * ROWS * COLS + per_frame
        if growth > budget:
            over.append(f"{step}: peak grows by {growth / 1e3:.0f} kB per {ROWS}x{COLS} frame (budget "
                        f"{budget / 1e3:.0f} kB; {peaks[n][step] / 1e6:.2f} MB at {n} frames, "
                        f"{peaks[4 * n][step] / 1e6:.2f} MB at {4 * n})")
        print(f"{step}: {growth / 1e3:.1f} kB per frame (budget {budget / 1e3:.0f} kB)")
    assert not over, "; ".join(over)
