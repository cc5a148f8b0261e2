"""The UltraAD paper's published numbers (../shared/papers/ultraad-few-shot-clip-ultrasound.txt, Tab. 3.1 and
Tab. 2): BUSI, ViT-L-14-336, shots 4 / 8 / 16 per class from BUS-UCLM, mean of 3 seeds, in %.

Keys are this benchmark's method names. ``detection``: binary I-AUROC (Tab. 3.1 left); ``classification``: the
multi-class AUROC of the few-shot classifiers (Tab. 3.1 right); ``localisation``: the first value of Tab. 2's pairs
(read as P-AUROC; the extracted text does not name the pair). WinCLIP is zero-shot: one value for every k. The paper's BUSZS set is in-house, so only BUSI is listed.
"""

from __future__ import annotations

SHOTS = (4, 8, 16)
_ZS = lambda v: dict.fromkeys(SHOTS, v)

PAPER_BUSI: dict[str, dict[str, dict[int, float]]] = {
    "WinCLIP": {"detection": _ZS(79.7), "localisation": _ZS(79.7)},
    "AnomalyCLIP": {"detection": {4: 62.9, 8: 81.9, 16: 85.6}, "localisation": {4: 87.8, 8: 90.0, 16: 90.6}},
    "MVFA": {"detection": {4: 78.4, 8: 84.0, 16: 90.6}, "localisation": {4: 69.9, 8: 66.2, 16: 69.5}},
    "LP++": {"classification": {4: 56.8, 8: 62.3, 16: 70.1}},
    "CLIP-Adapter": {"classification": {4: 51.8, 8: 51.8, 16: 52.0}},
    "Tip-Adapter": {"classification": {4: 58.9, 8: 61.4, 16: 68.8}},
    "CoOp": {"classification": {4: 58.8, 8: 61.8, 16: 67.7}},
    "UltraAD": {"detection": {4: 87.0, 8: 90.7, 16: 91.4}, "classification": {4: 68.6, 8: 72.0, 16: 73.8},
                "localisation": {4: 88.3, 8: 91.5, 16: 91.8}},
}
#: paper column -> this benchmark's metric key
METRICS = {"detection": "image_auroc", "classification": "cls_auroc_macro", "localisation": "pixel_auroc"}
