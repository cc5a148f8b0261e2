"""Seeded, patient-disjoint few-shot splits: a fixed test set, k shots per class, and a validation rest.

All randomness goes through :class:`numpy.random.Generator` objects built from explicit seeds (never
the global RNG), and every choice is made on items sorted by id, so a split depends only on the
item *set* and the seeds, not on the order the reader listed the files in.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monai_ultraad.constants import CLASS_NAMES, ID_KEY, LABEL_KEY, PATIENT_KEY
from monai_ultraad.data.datasets import class_index
from monai_ultraad.errors import InputDataError

__all__ = [
    "FEWSHOT_SPLIT_VERSION",
    "FewShotSplit",
    "check_patient_disjoint",
    "make_fewshot_split",
    "patient_split",
    "sample_k_shot",
]

#: Format version of :meth:`FewShotSplit.to_json`.
FEWSHOT_SPLIT_VERSION = 1

Item = dict[str, Any]


def _label(item: Mapping[str, Any]) -> int:
    return int(item[LABEL_KEY])


def _patient(item: Mapping[str, Any]) -> str:
    # An item without patient id is its own patient (BUSI-like data): still a valid grouping.
    return str(item.get(PATIENT_KEY) or item[ID_KEY])


def _class_list(classes: Iterable[int | str] | None, items: Sequence[Item]) -> list[int]:
    """Normalise ``classes`` (names or indices) to sorted indices; default: the classes present."""
    if classes is None:
        return sorted({_label(it) for it in items})
    return sorted({class_index(c, "classes argument") for c in classes})


# ----------------------------------------------------------------------------------- patient split
def _split_cost(counts: np.ndarray, target: np.ndarray, totals: np.ndarray) -> float:
    """Squared relative deviation of the per-class test counts from their targets."""
    return float((((counts - target) / np.maximum(totals, 1)) ** 2).sum())


def patient_split(items: Sequence[Item], test_fraction: float = 0.3, seed: int = 0) -> tuple[list[Item], list[Item]]:
    """Split ``items`` into (pool, test) with no patient in both, stratified by class.

    Patients often hold images of several classes (a benign lesion and normal views), so sklearn's
    ``StratifiedGroupKFold`` (one label per sample, fraction fixed to 1/n_splits) does not quite fit;
    instead a greedy stratification in the same spirit is used: patients are visited in a seeded
    random order, largest first, and each joins the test set when that brings every class's test
    count closer to ``test_fraction`` of that class. Afterwards every class that has images of at
    least two patients is made present on both sides by moving its smallest patient across.

    Args:
        items: item dictionaries with ``label`` and ``patient`` (or ``id``).
        test_fraction: wanted fraction of each class in the test part, in (0, 1).
        seed: seed of the patient order; the same seed gives the same split.

    Returns:
        (pool, test), each in the input order.

    Raises:
        InputDataError: fewer than two patients, or ``test_fraction`` outside (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise InputDataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_classes = len(CLASS_NAMES)
    per_patient: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(n_classes, dtype=np.int64))
    for item in items:
        per_patient[_patient(item)][_label(item)] += 1
    patients = sorted(per_patient)  # sorted first: the result must not depend on the input order
    if len(patients) < 2:
        raise InputDataError(f"a patient-disjoint split needs at least 2 patients, got {len(patients)}")

    rng = np.random.default_rng(seed)
    order = [patients[i] for i in rng.permutation(len(patients))]
    order.sort(key=lambda p: -int(per_patient[p].sum()))  # stable sort keeps the random tie order
    totals = np.sum([per_patient[p] for p in patients], axis=0)
    target = test_fraction * totals
    counts = np.zeros(n_classes, dtype=np.float64)
    test_patients: set[str] = set()
    for patient in order:
        if _split_cost(counts + per_patient[patient], target, totals) < _split_cost(counts, target, totals):
            counts += per_patient[patient]
            test_patients.add(patient)
    if not test_patients:  # tiny data: the greedy found no improvement; take the smallest patient
        test_patients.add(min(order, key=lambda p: int(per_patient[p].sum())))
    if len(test_patients) == len(patients):
        test_patients.discard(max(order, key=lambda p: int(per_patient[p].sum())))

    # Make each class present on both sides where its patients allow it.
    for cls in range(n_classes):
        holders = [p for p in patients if per_patient[p][cls] > 0]
        if len(holders) < 2:
            continue
        in_test = [p for p in holders if p in test_patients]
        in_pool = [p for p in holders if p not in test_patients]
        if not in_test:
            test_patients.add(min(in_pool, key=lambda p: (int(per_patient[p].sum()), p)))
        elif not in_pool:
            test_patients.discard(min(in_test, key=lambda p: (int(per_patient[p].sum()), p)))

    pool = [it for it in items if _patient(it) not in test_patients]
    test = [it for it in items if _patient(it) in test_patients]
    return pool, test


# -------------------------------------------------------------------------------------- k-shot sample
def sample_k_shot(items: Sequence[Item], k: int, seed: int, classes: Iterable[int | str] | None = None) -> list[Item]:
    """Draw exactly ``k`` items of every class in ``classes`` (default: the classes that occur).

    Each class uses its own generator seeded with ``(seed, class index)``, so adding or removing a
    class does not change the shots of the others. The result is grouped by class (``CLASS_NAMES``
    order) and sorted by id within a class.

    Raises:
        InputDataError: ``k < 1`` or a class with fewer than ``k`` items.
    """
    if int(k) != k or k < 1:
        raise InputDataError(f"shots must be a positive integer, got {k!r}")
    k = int(k)
    shots: list[Item] = []
    for cls in _class_list(classes, items):
        candidates = sorted((it for it in items if _label(it) == cls), key=lambda it: str(it[ID_KEY]))
        if len(candidates) < k:
            raise InputDataError(
                f"class '{CLASS_NAMES[cls]}' has only {len(candidates)} images in the training pool, "
                f"fewer than shots={k}"
            )
        rng = np.random.default_rng([seed, cls])
        chosen = np.sort(rng.choice(len(candidates), size=k, replace=False))
        shots.extend(candidates[i] for i in chosen)
    return shots


# -------------------------------------------------------------------------------------- full split
def check_patient_disjoint(**groups: Sequence[Item]) -> None:
    """Raise :class:`InputDataError` if any two named groups of items share a patient."""
    names = list(groups)
    patients = {name: {_patient(it) for it in groups[name]} for name in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = patients[a] & patients[b]
            if shared:
                raise InputDataError(
                    f"few-shot split is not patient-disjoint: {a} and {b} share patient(s) {sorted(shared)[:5]}"
                )


@dataclass
class FewShotSplit:
    """One few-shot experiment's data: ``k`` shots per class, a validation set and a test set.

    ``test`` depends only on ``split_seed`` (fixed across shot seeds); ``shots`` on ``seed``;
    ``validation`` is the remaining training pool without the patients that gave a shot. The three
    parts never share a patient (checked on construction).
    """

    shots: list[Item]
    validation: list[Item]
    test: list[Item]
    seed: int
    split_seed: int
    k: int
    test_fraction: float = 0.3
    max_val_per_class: int | None = None
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_patient_disjoint(shots=self.shots, validation=self.validation, test=self.test)

    def to_dict(self) -> dict[str, Any]:
        """Ids and parameters only (no paths), e.g. to record the shot list in a checkpoint."""
        return {
            "version": FEWSHOT_SPLIT_VERSION,
            "k": self.k,
            "seed": self.seed,
            "split_seed": self.split_seed,
            "test_fraction": self.test_fraction,
            "max_val_per_class": self.max_val_per_class,
            "classes": list(self.classes),
            "shots": [str(it[ID_KEY]) for it in self.shots],
            "validation": [str(it[ID_KEY]) for it in self.validation],
            "test": [str(it[ID_KEY]) for it in self.test],
        }

    def to_json(self, indent: int | None = None) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, data: str | Mapping[str, Any], items: Sequence[Item]) -> FewShotSplit:
        """Rebuild a split from :meth:`to_json` output (string or dict) and the dataset's items.

        Raises:
            InputDataError: malformed JSON, unsupported version, or an id not found in ``items``.
        """
        try:
            record = json.loads(data) if isinstance(data, str) else dict(data)
            if record.get("version") != FEWSHOT_SPLIT_VERSION:
                raise InputDataError(f"unsupported few-shot split version {record.get('version')!r}")
            by_id = {str(it[ID_KEY]): it for it in items}

            def lookup(part: str) -> list[Item]:
                missing = [i for i in record[part] if i not in by_id]
                if missing:
                    raise InputDataError(f"few-shot split {part} ids not in the dataset: {missing[:5]}")
                return [by_id[i] for i in record[part]]

            return cls(
                shots=lookup("shots"),
                validation=lookup("validation"),
                test=lookup("test"),
                seed=int(record["seed"]),
                split_seed=int(record["split_seed"]),
                k=int(record["k"]),
                test_fraction=float(record.get("test_fraction", 0.3)),
                max_val_per_class=record.get("max_val_per_class"),
                classes=list(record.get("classes", [])),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            if isinstance(err, InputDataError):
                raise
            raise InputDataError(f"malformed few-shot split record: {err!r}") from err


def make_fewshot_split(
    items: Sequence[Item],
    k: int,
    seed: int,
    split_seed: int = 0,
    test_fraction: float = 0.3,
    max_val_per_class: int | None = None,
    classes: Iterable[int | str] | None = None,
) -> FewShotSplit:
    """Build a :class:`FewShotSplit`: patient-disjoint test, ``k`` shots per class, validation rest.

    Args:
        items: all items of the dataset.
        k: shots per class.
        seed: seed of the shot sampling (and of the validation cap).
        split_seed: seed of the test split; keep it fixed to compare shot seeds on one test set.
        test_fraction: fraction of each class held out for test.
        max_val_per_class: if given, at most this many validation items per class (seeded choice).
        classes: classes to draw shots for (default: every class in ``items``).

    Raises:
        InputDataError: a class with fewer than ``k`` images in the pool, or any split error.
    """
    class_ids = _class_list(classes, items)
    pool, test = patient_split(items, test_fraction=test_fraction, seed=split_seed)
    shots = sample_k_shot(pool, k, seed, classes=class_ids)
    shot_patients = {_patient(it) for it in shots}
    validation = [it for it in pool if _patient(it) not in shot_patients]
    if max_val_per_class is not None:
        # A different stream than the shots' (seed, class) generators, so capping never mirrors them.
        capped_ids: set[str] = set()
        for cls, count in sorted(Counter(_label(it) for it in validation).items()):
            members = sorted((it for it in validation if _label(it) == cls), key=lambda it: str(it[ID_KEY]))
            if count > max_val_per_class:
                rng = np.random.default_rng([seed, cls, 1])
                members = [members[i] for i in rng.choice(count, size=max_val_per_class, replace=False)]
            capped_ids.update(str(it[ID_KEY]) for it in members)
        validation = [it for it in validation if str(it[ID_KEY]) in capped_ids]
    return FewShotSplit(
        shots=shots,
        validation=validation,
        test=test,
        seed=seed,
        split_seed=split_seed,
        k=int(k),
        test_fraction=test_fraction,
        max_val_per_class=max_val_per_class,
        classes=[CLASS_NAMES[c] for c in class_ids],
    )
