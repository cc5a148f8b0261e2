"""UltraAD MONAI Deploy application: DICOM ultrasound in; DICOM SEG heatmaps, TID 1500 SR reports and Secondary
Capture overlays out.

Flow (one operator per step; one source at a time travels the chain as a ``SourceWork`` on the ``source`` ports)::

    StudyLoader -> UltrasoundSelector -> RegionCrop -> UltraADInference -> SegWriter -> SRWriter -> OverlayWriter
        -> Publisher

Before any operator runs, :meth:`UltraADApp.compose` takes the output folder (lock, stale staging, write probe),
checks the model path, finds the sources and checks the free space. Writers stage their objects in the output
folder's hidden staging folder; the publisher makes a source's objects visible together, or drops them all.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pydicom.config
from monai.deploy.conditions import PeriodicCondition
from monai.deploy.core import AppContext, Application
from operators.output_folder import OutputFolder, estimated_output_bytes
from operators.overlay_writer import OverlayWriterOperator
from operators.publisher import PublisherOperator
from operators.region_crop import RegionCropOperator
from operators.run_report import RunReport
from operators.seg_writer import SegWriterOperator
from operators.sr_writer import SRWriterOperator
from operators.study_loader import InFlight, StudyLoaderOperator, find_sources
from operators.ultraad_inference import UltraADInferenceOperator, resolve_model_files
from operators.ultrasound_selector import UltrasoundSelectorOperator

logger = logging.getLogger("ultraad.deploy")

# pydicom's reading validation warns quoting the offending value (a patient's name, a path posing as a UID); the app
# checks what it relies on itself (monai_ultraad.dicom.identifiers, .source_header) and logs attribute names only.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


@dataclass
class AppOptions:
    """Options beyond the SDK's -i/-o/-m (given as --frame-step, --allow-random-init, --deterministic-uids)."""

    frame_step: int = 1
    max_frames: int | None = None
    allow_random_init: bool = False
    deterministic_uids: str | None = None  # a seed: same inputs -> same UIDs (tests); None -> fresh UIDs
    refuse_flagged: bool = False  # refuse images the input gate flags (colour overlay, marks) instead of analysing


class UltraADApp(Application):
    """Breast-ultrasound lesion heatmaps and normal / benign / malignant classification (UltraAD)."""

    def __init__(self, *args, options: AppOptions | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # prefixed names: holoscan's Application already has attributes such as `options`
        self.ultraad_options = options or AppOptions()
        self.run_report = RunReport()
        self.output_folder: Path | None = None
        self.output: OutputFolder | None = None  # held (locked) by this run once compose() has opened it

    def compose(self) -> None:
        app_context: AppContext = Application.init_app_context(self.argv)
        input_folder = Path(app_context.input_path)
        output_folder = Path(app_context.output_path)
        model_path = Path(app_context.model_path)
        self.output_folder = output_folder
        opts, report = self.ultraad_options, self.run_report
        report.input_root = input_folder
        logger.info("input %s, output %s, model %s", input_folder, output_folder, model_path)
        # Fail fast, before the model runs: output folder (one run at a time, writable), model path, free space.
        self.output = output = OutputFolder.open(output_folder)
        resolve_model_files(model_path)
        sources = find_sources(input_folder, report)
        selector = UltrasoundSelectorOperator(self, frame_step=opts.frame_step, max_frames=opts.max_frames,
                                              name="ultrasound_selector")
        output.check_space(max((_needed_bytes(p, selector) for p in sources), default=0))

        in_flight = InFlight()
        loader = StudyLoaderOperator(self, PeriodicCondition(self, recess_period=0.01, name="next_source"),
                                     sources=sources, report=report, in_flight=in_flight, name="study_loader")
        chain = [
            loader,
            selector,
            RegionCropOperator(self, name="region_crop"),
            UltraADInferenceOperator(self, model_path=model_path, allow_random_init=opts.allow_random_init,
                                     refuse_flagged=opts.refuse_flagged, output=output, name="ultraad_inference"),
            SegWriterOperator(self, output=output, uid_seed=opts.deterministic_uids, name="seg_writer"),
            SRWriterOperator(self, output=output, uid_seed=opts.deterministic_uids, name="sr_writer"),
            OverlayWriterOperator(self, output=output, uid_seed=opts.deterministic_uids, name="overlay_writer"),
            PublisherOperator(self, output=output, report=report, in_flight=in_flight, name="publisher"),
        ]
        for upstream, downstream in itertools.pairwise(chain):
            self.add_flow(upstream, downstream, {("source", "source")})


def _needed_bytes(path: Path, selector: UltrasoundSelectorOperator) -> int:
    """Estimated size of the objects made from ``path`` (its header only); 0 when the header cannot tell."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        frames = selector.kept_frames(int(header.get("NumberOfFrames") or 1))
        rows, cols = int(header.Rows), int(header.Columns)
        if selector.refuses_size(rows, cols, frames):
            return 0  # refused before anything is written; its claimed size must not block the others
        return estimated_output_bytes(rows, cols, frames)
    except Exception:  # noqa: BLE001 - the selector reports the file's problem
        return 0
