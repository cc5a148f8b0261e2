"""A known-answer set of synthetic breast-ultrasound-like images, generated on the fly (nothing is stored).

Each image is speckled layered tissue (skin line, subcutaneous fat, fibroglandular layer, chest wall), seen as a
B-mode scan: multiplicative Rayleigh speckle, a depth-dependent gain, a slight blur along the beam. Classes:

* **normal**: plain tissue;
* **benign**: a smooth, wider-than-tall, nearly anechoic ellipse (no internal speckle) with posterior acoustic
  enhancement (a brighter band below it);
* **malignant**: a spiculated hypoechoic mass (heterogeneous, low-level internal echoes) with posterior acoustic
  shadowing (a dark column below it).

The mask is the lesion exactly (not the enhancement or the shadow). The contrasts are strong at the scale of a
backbone patch (lesion radius 13-22 % of the image side, about 2-3 patches of the tiny backbone), so a randomly
initialised frozen tower still encodes them: a learner that works must find them, one that is broken must not.
Everything is drawn from ``numpy.random.default_rng(seed)``; the same seed gives the same files byte for byte.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("normal", "benign", "malignant")


def _smooth(x: np.ndarray, passes: int, axis: int) -> np.ndarray:
    for _ in range(passes):
        x = (np.roll(x, 1, axis) + 2 * x + np.roll(x, -1, axis)) / 4.0
    return x


def _tissue(rng: np.random.Generator, size: int) -> np.ndarray:
    """Echogenicity (before speckle) of layered breast tissue, rows = depth."""
    depth = np.linspace(0.0, 1.0, size)[:, None] * np.ones((1, size))
    x = np.linspace(0.0, 1.0, size)[None, :]
    wave = lambda amp: amp * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * x + rng.uniform(0, 1)))
    skin, fat, gland = 0.05 + wave(0.01), 0.25 + wave(0.04), 0.75 + wave(0.05)
    echo = np.full((size, size), 0.45)  # subcutaneous fat: medium-low
    echo[depth < skin] = 0.95  # skin line
    echo[(depth >= fat) & (depth < gland)] = 0.7  # fibroglandular layer: bright
    echo[depth >= gland] = 0.35  # pectoral muscle
    echo[(depth >= gland) & (depth < gland + 0.02)] = 0.9  # fascia
    return echo


def _lesion(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Boolean lesion mask and (centre row, centre col, radius) in pixels."""
    r = rng.uniform(0.13, 0.22) * size
    # upper half, right of centre: a map flipped upside down or transposed lands away from the lesion
    cy, cx = rng.uniform(0.3, 0.4) * size, rng.uniform(0.55, 0.75) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    dy, dx = yy - cy, xx - cx
    if kind == "benign":  # smooth, oval, parallel to the skin
        a, b = r * rng.uniform(1.2, 1.45), r * rng.uniform(0.7, 0.85)
        return (dx / a) ** 2 + (dy / b) ** 2 <= 1.0, (cy, cx, r)
    theta, rho = np.arctan2(dy, dx), np.hypot(dy, dx)
    spikes = rng.integers(7, 12)
    phase = rng.uniform(0, 2 * np.pi)
    radius = r * (0.8 + 0.35 * np.clip(np.sin(spikes * theta + phase), 0, None) ** 3 + 0.08 * np.sin(3 * theta))
    return rho <= radius, (cy, cx, r)


def make_image(rng: np.random.Generator, kind: str, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(size, size) uint8 B-mode image and uint8 {0, 255} mask of one image of class ``kind``."""
    echo = _tissue(rng, size)
    mask = np.zeros((size, size), bool)
    if kind != "normal":
        mask, (cy, cx, r) = _lesion(rng, size, kind)
        cols = np.abs(np.arange(size) - cx) <= r * (1.1 if kind == "benign" else 0.9)
        below = np.arange(size)[:, None] > cy
        column = below & cols[None, :] & ~mask
        if kind == "benign":
            echo = np.where(column, np.minimum(echo * 1.6, 1.0), echo)  # posterior enhancement
            echo = np.where(mask, 0.04, echo)  # anechoic
        else:
            echo = np.where(column, echo * 0.25, echo)  # posterior shadowing
            echo = np.where(mask, 0.15 + 0.1 * rng.random((size, size)), echo)  # hypoechoic, heterogeneous
    speckle = rng.rayleigh(scale=0.8, size=(size, size))
    if kind == "benign":
        speckle = np.where(mask, 1.0, speckle)  # fluid: no internal speckle
    img = _smooth(echo * speckle, 1, axis=0)
    img *= np.linspace(1.05, 0.8, size)[:, None]  # depth gain
    img *= rng.uniform(0.8, 1.2)  # overall gain, set by the operator: a nuisance that nearest-neighbour must see past
    img = np.clip(img * 200.0, 0, 255).astype(np.uint8)
    return img, (mask * 255).astype(np.uint8)


def make_dataset(root: str | Path, per_class: int = 40, seed: int = 0, size: int = 128) -> Path:
    """Write ``per_class`` images per class (one patient each) and ``labels.csv`` under ``root``; returns root."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(per_class):
        for kind in CLASSES:
            name = f"{kind}_{index:03d}"
            img, mask = make_image(rng, kind, size)
            Image.fromarray(img).save(root / "images" / f"{name}.png")
            mask_rel = ""
            if kind != "normal":
                Image.fromarray(mask).save(root / "masks" / f"{name}.png")
                mask_rel = f"masks/{name}.png"
            rows.append({"image": f"images/{name}.png", "mask": mask_rel, "label": kind, "patient": name})
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "mask", "label", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    return root
