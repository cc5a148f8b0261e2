"""Tests of the seeded, patient-disjoint few-shot splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monai_ultraad.constants import CLASS_NAMES
from monai_ultraad.data.datasets import default_data_dir, read_dataset
from monai_ultraad.data.fewshot import (
    FewShotSplit,
    check_patient_disjoint,
    make_fewshot_split,
    patient_split,
    sample_k_shot,
)
from monai_ultraad.errors import InputDataError


def _items(n_patients: int = 24, seed: int = 123) -> list[dict[str, Any]]:
    """Synthetic items: patients with mixed classes, like BUS-UCLM (normal views plus a lesion)."""
    rng = np.random.default_rng(seed)
    items = []
    for p in range(n_patients):
        counts = [
            int(rng.integers(1, 6)),
            int(rng.integers(0, 4)) if p % 3 else 0,
            int(rng.integers(0, 3)) if p % 3 == 0 else 0,
        ]
        for cls, count in enumerate(counts):
            for i in range(count):
                items.append({"id": f"P{p:02d}_{CLASS_NAMES[cls]}_{i}", "label": cls, "patient": f"P{p:02d}"})
    return items


def _patients(items: list[dict[str, Any]]) -> set[str]:
    return {it["patient"] for it in items}


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [it["id"] for it in items]


# ------------------------------------------------------------------------------------ patient_split
def test_patient_split_disjoint_stratified_deterministic() -> None:
    items = _items()
    pool, test = patient_split(items, test_fraction=0.3, seed=0)
    assert not _patients(pool) & _patients(test)
    assert sorted(_ids(pool) + _ids(test)) == sorted(_ids(items))
    for cls in range(3):  # every class on both sides, near the wanted fraction
        total = sum(it["label"] == cls for it in items)
        in_test = sum(it["label"] == cls for it in test)
        assert 0 < in_test < total
        assert abs(in_test / total - 0.3) < 0.2
    again = patient_split(items, test_fraction=0.3, seed=0)
    assert (_ids(again[0]), _ids(again[1])) == (_ids(pool), _ids(test))
    # The split depends on the item set, not the listing order; outputs keep the input order.
    shuffled = list(reversed(items))
    _, test_r = patient_split(shuffled, test_fraction=0.3, seed=0)
    assert sorted(_ids(test_r)) == sorted(_ids(test)) and _ids(test_r) == [
        i for i in _ids(shuffled) if i in set(_ids(test))
    ]
    others = {tuple(sorted(_patients(patient_split(items, 0.3, seed)[1]))) for seed in range(1, 6)}
    assert len(others | {tuple(sorted(_patients(test)))}) > 1


def test_patient_split_errors() -> None:
    one_patient = [{"id": f"x{i}", "label": 0, "patient": "A"} for i in range(5)]
    with pytest.raises(InputDataError, match="at least 2 patients"):
        patient_split(one_patient)
    with pytest.raises(InputDataError, match=r"test_fraction must be in \(0, 1\)"):
        patient_split(_items(), test_fraction=1.0)


# ------------------------------------------------------------------------------------ sample_k_shot
def test_sample_k_shot_exact_and_seeded() -> None:
    items = _items()
    shots = sample_k_shot(items, k=3, seed=7)
    assert Counter(it["label"] for it in shots) == {0: 3, 1: 3, 2: 3}
    assert [it["label"] for it in shots] == sorted(it["label"] for it in shots)  # grouped by class
    assert _ids(sample_k_shot(list(reversed(items)), k=3, seed=7)) == _ids(shots)
    assert _ids(sample_k_shot(items, k=3, seed=8)) != _ids(shots)
    only = sample_k_shot(items, k=2, seed=7, classes=["benign", 2])
    assert Counter(it["label"] for it in only) == {1: 2, 2: 2}
    # Per-class generators: dropping a class does not change the others' shots.
    assert [i for i in _ids(sample_k_shot(items, k=3, seed=7)) if "benign" in i] == [
        i for i in _ids(sample_k_shot(items, k=3, seed=7, classes=["benign"]))
    ]


def test_sample_k_shot_too_few() -> None:
    items = [{"id": f"m{i}", "label": 2, "patient": f"p{i}"} for i in range(3)]
    items += [{"id": f"n{i}", "label": 0, "patient": f"p{i}"} for i in range(9)]
    with pytest.raises(InputDataError) as err:
        sample_k_shot(items, k=4, seed=0)
    assert str(err.value) == "class 'malignant' has only 3 images in the training pool, fewer than shots=4"
    with pytest.raises(InputDataError, match="class 'benign' has only 0 images"):
        sample_k_shot(items, k=1, seed=0, classes=CLASS_NAMES)
    with pytest.raises(InputDataError, match="positive integer"):
        sample_k_shot(items, k=0, seed=0)


# ------------------------------------------------------------------------------- make_fewshot_split
def test_make_fewshot_split() -> None:
    items = _items()
    splits = [make_fewshot_split(items, k=2, seed=s, split_seed=0) for s in range(3)]
    for split in splits:
        assert Counter(it["label"] for it in split.shots) == {0: 2, 1: 2, 2: 2}
        check_patient_disjoint(shots=split.shots, validation=split.validation, test=split.test)
        pool_ids = set(_ids(items)) - set(_ids(split.test))
        shot_patients = _patients(split.shots)
        assert set(_ids(split.validation)) == {
            i["id"] for i in items if i["id"] in pool_ids and i["patient"] not in shot_patients
        }
        assert split.classes == list(CLASS_NAMES)
    assert len({tuple(_ids(s.test)) for s in splits}) == 1  # test fixed across shot seeds
    assert len({tuple(_ids(s.shots)) for s in splits}) == 3
    assert _ids(make_fewshot_split(items, k=2, seed=1).shots) == _ids(splits[1].shots)

    capped = make_fewshot_split(items, k=2, seed=0, max_val_per_class=2)
    assert all(v <= 2 for v in Counter(it["label"] for it in capped.validation).values())
    assert set(_ids(capped.validation)) <= set(_ids(splits[0].validation))


def test_fewshot_split_json_roundtrip() -> None:
    items = _items()
    split = make_fewshot_split(items, k=2, seed=4, split_seed=1, max_val_per_class=3)
    record = json.loads(split.to_json())
    assert set(record) >= {"version", "k", "seed", "split_seed", "shots", "validation", "test"}
    assert record["shots"] == _ids(split.shots) and all(isinstance(i, str) for i in record["test"])
    restored = FewShotSplit.from_json(split.to_json(), items)
    assert restored == split
    assert FewShotSplit.from_json(record, items) == split

    record["shots"] = record["shots"] + ["ghost"]
    with pytest.raises(InputDataError, match="ids not in the dataset: \\['ghost'\\]"):
        FewShotSplit.from_json(record, items)
    record["shots"] = record["shots"][:-1] + [record["test"][0]]  # a test image among the shots
    with pytest.raises(InputDataError, match="not patient-disjoint: shots and test share"):
        FewShotSplit.from_json(record, items)
    with pytest.raises(InputDataError, match="malformed few-shot split"):
        FewShotSplit.from_json("{", items)


# ---------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_bus_uclm_fewshot_k4() -> None:
    root = default_data_dir()
    if root is None or not (root / "bus_uclm" / "labels.csv").is_file():
        pytest.skip("real data bus_uclm/labels.csv not found (set $ULTRAAD_DATA_DIR or provide ../shared/data)")
    items = read_dataset(Path(root) / "bus_uclm")
    splits = [make_fewshot_split(items, k=4, seed=seed, split_seed=0) for seed in (0, 1, 2)]
    for split in splits:
        assert Counter(it["label_name"] for it in split.shots) == {"normal": 4, "benign": 4, "malignant": 4}
        check_patient_disjoint(shots=split.shots, validation=split.validation, test=split.test)
        assert {it["label_name"] for it in split.test} == set(CLASS_NAMES)
        assert {it["label_name"] for it in split.validation} == set(CLASS_NAMES)
        assert FewShotSplit.from_json(split.to_json(), items) == split
    assert len({tuple(_ids(s.test)) for s in splits}) == 1
    assert len({tuple(_ids(s.shots)) for s in splits}) == 3
