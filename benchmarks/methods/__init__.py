"""The benchmarked methods, by the key used in benchmark configs."""

from __future__ import annotations

from benchmarks.methods.anomaly import MVFA, AprilGAN
from benchmarks.methods.anomalyclip import AnomalyCLIP
from benchmarks.methods.base import FitData, Method, MethodCard, Prediction
from benchmarks.methods.classifiers import CLIPAdapter, LinearProbe, LPPlusPlus, TipAdapter, TipAdapterF
from benchmarks.methods.prompt_learning import CoCoOp, CoOp
from benchmarks.methods.ultraad import (
    UltraADGenericPrompts,
    UltraADMethod,
    UltraADNoFusion,
    UltraADNoImageAwarePrompts,
    UltraADNoMemory,
    UltraADNoMultitask,
)
from benchmarks.methods.winclip import WinCLIP, WinCLIPPlus

METHODS: dict[str, type[Method]] = {
    "zero_shot": WinCLIP,
    "winclip_plus": WinCLIPPlus,
    "linear_probe": LinearProbe,
    "lp_plus_plus": LPPlusPlus,
    "tip_adapter": TipAdapter,
    "tip_adapter_f": TipAdapterF,
    "clip_adapter": CLIPAdapter,
    "coop": CoOp,
    "cocoop": CoCoOp,
    "april_gan": AprilGAN,
    "mvfa": MVFA,
    "anomalyclip": AnomalyCLIP,
    "ultraad": UltraADMethod,
    "ultraad_no_image_aware": UltraADNoImageAwarePrompts,
    "ultraad_no_memory": UltraADNoMemory,
    "ultraad_no_fusion": UltraADNoFusion,
    "ultraad_no_multitask": UltraADNoMultitask,
    "ultraad_generic_prompts": UltraADGenericPrompts,
}

__all__ = ["METHODS", "FitData", "Method", "MethodCard", "Prediction"]
