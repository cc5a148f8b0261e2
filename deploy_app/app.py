"""UltraAD MONAI Deploy application: DICOM ultrasound in; DICOM SEG heatmaps, TID 1500 SR reports and Secondary
Capture overlays out.

Flow (one operator per step, named ports)::

    StudyLoader --dicom_files--> UltrasoundSelector --images--> RegionCrop --cropped--> UltraADInference
    UltraADInference --results--> SegWriter --segmentations--> SRWriter
    UltraADInference --results--> OverlayWriter
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application
from operators.overlay_writer import OverlayWriterOperator
from operators.region_crop import RegionCropOperator
from operators.run_report import RunReport
from operators.seg_writer import SegWriterOperator
from operators.sr_writer import SRWriterOperator
from operators.study_loader import StudyLoaderOperator
from operators.ultraad_inference import UltraADInferenceOperator, resolve_model_files
from operators.ultrasound_selector import UltrasoundSelectorOperator

logger = logging.getLogger("ultraad.deploy")


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

    def compose(self) -> None:
        app_context: AppContext = Application.init_app_context(self.argv)
        input_folder = Path(app_context.input_path)
        output_folder = Path(app_context.output_path)
        model_path = Path(app_context.model_path)
        self.output_folder = output_folder
        resolve_model_files(model_path)  # fail before reading the study when the model cannot be found
        logger.info("input %s, output %s, model %s", input_folder, output_folder, model_path)
        opts, report = self.ultraad_options, self.run_report

        loader = StudyLoaderOperator(self, CountCondition(self, 1), input_folder=input_folder, report=report,
                                     name="study_loader")
        selector = UltrasoundSelectorOperator(self, report=report, frame_step=opts.frame_step,
                                              max_frames=opts.max_frames, name="ultrasound_selector")
        crop = RegionCropOperator(self, name="region_crop")
        inference = UltraADInferenceOperator(self, model_path=model_path, report=report,
                                             allow_random_init=opts.allow_random_init,
                                             refuse_flagged=opts.refuse_flagged, name="ultraad_inference")
        seg_writer = SegWriterOperator(self, output_folder=output_folder, report=report,
                                       uid_seed=opts.deterministic_uids, name="seg_writer")
        sr_writer = SRWriterOperator(self, output_folder=output_folder, report=report,
                                     uid_seed=opts.deterministic_uids, name="sr_writer")
        overlay_writer = OverlayWriterOperator(self, output_folder=output_folder, report=report,
                                               uid_seed=opts.deterministic_uids, name="overlay_writer")

        self.add_flow(loader, selector, {("dicom_files", "dicom_files")})
        self.add_flow(selector, crop, {("images", "images")})
        self.add_flow(crop, inference, {("cropped", "cropped")})
        self.add_flow(inference, seg_writer, {("results", "results")})
        self.add_flow(seg_writer, sr_writer, {("segmentations", "segmentations")})
        self.add_flow(inference, overlay_writer, {("results", "results")})
