"""Step 3: choose what the model sees: the tissue (B-mode) ultrasound regions, or the whole frame."""

from __future__ import annotations

from monai.deploy.core import Operator, OperatorSpec

from monai_ultraad.inference import analysis_windows

from .source_work import SourceWork


class RegionCropOperator(Operator):
    """Attaches to the source the windows to analyse: its tissue regions from the Sequence of Ultrasound Regions
    (scanner text, colour bars and Doppler panels are left out), or the full frame when it has none."""

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("source")
        spec.output("source")

    def compute(self, op_input, op_output, context) -> None:
        work: SourceWork = op_input.receive("source")
        if work.ok:
            try:
                work.windows = analysis_windows(work.image.tissue_regions, work.image.rows, work.image.cols)
            except Exception as exc:  # noqa: BLE001
                work.fail(f"analysis windows: {type(exc).__name__}: {exc}")
        op_output.emit(work, "source")
