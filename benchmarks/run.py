"""Run the few-shot benchmark: every method on the same backbone, cached features, shots, splits and metrics.

    python -m benchmarks.run --config benchmarks/configs/default.yaml
    python -m benchmarks.run --config benchmarks/configs/cpu.yaml --pretrained /models/ViT-B-16.pt
    python -m benchmarks.run --config benchmarks/configs/default.yaml --target busi=/data/BUSI

Results go to ``benchmarks/results/<name>/``: ``results.json``, ``results.md``, ``roc_<target>.png``,
``heatmaps.png`` and ``cells/`` (one file per method, k and seed). Rerunning the same command resumes: finished
cells are read back, not recomputed. Frozen-backbone features are cached on disk once per backbone and image and
shared by every method and every run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import logging
import platform
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import yaml
from tqdm.auto import tqdm

from benchmarks import protocol, report, shortcut_audit
from benchmarks.methods import METHODS
from monai_ultraad import engine
from monai_ultraad.constants import CLASS_NAMES, RANDOM_WEIGHTS_WARNING
from monai_ultraad.data import default_data_dir, read_dataset
from monai_ultraad.errors import InputDataError, UltraADError, WeightsError
from monai_ultraad.io_utils import atomic_write_bytes, atomic_write_json
from monai_ultraad.networks import DEFAULT_BACKBONE, ClipBackbone, is_random_init
from monai_ultraad.runtime import tune_cpu_allocator

logger = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parent
DEFAULTS: dict[str, Any] = {
    "name": None,
    "backbone": DEFAULT_BACKBONE,
    "pretrained": "openai",
    "random_fallback": True,
    "feature_layers": None,
    "shots": [4, 8, 16],
    "seeds": [0, 1, 2],
    "split_seed": 0,
    "test_fraction": 0.3,
    "max_val_per_class": 20,
    "train_dataset": "bus_uclm",
    "targets": {"bus_uclm_test": {"dataset": "bus_uclm", "part": "test"},
                "bus_bra": {"dataset": "bus_bra", "part": "all", "max_images": None}},
    "methods": list(METHODS),
    "method_options": {},
    "batch_size": 16,
    "cache_dir": None,
    "device": "auto",
    "grid_images": 6,
    "memory_gb": 4.0,
}


def load_config(path: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(DEFAULTS)
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise InputDataError(f"{path}: cannot read benchmark config: {err}") from err
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise InputDataError(f"{path}: unknown config keys {unknown}; known: {sorted(DEFAULTS)}")
        cfg.update(loaded)
        cfg["name"] = cfg["name"] or Path(path).stem
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg["name"] = cfg["name"] or "default"
    bad = [m for m in cfg["methods"] if m not in METHODS]
    if bad:
        raise InputDataError(f"unknown methods {bad}; available: {list(METHODS)}")
    return cfg


def build_backbone(cfg: dict[str, Any]) -> tuple[ClipBackbone, str | None]:
    """The frozen backbone; without loadable weights a LOUD random-init fallback (recorded in every output)."""
    layers = cfg["feature_layers"]
    pretrained = cfg["pretrained"]
    random = is_random_init(pretrained)
    reason = "requested with --pretrained random" if random else None
    if not random and Path(str(pretrained)).suffix in (".pt", ".pth", ".bin", ".safetensors") \
            and not Path(str(pretrained)).exists():
        # a weight FILE the user named is a typo or a missing download, not a reason to benchmark random weights
        raise WeightsError(f"weight file not found: {pretrained} (fetch it as bundle/large_files.yml lists it)")
    if not random:
        try:
            return ClipBackbone(cfg["backbone"], pretrained, layers), None
        except (WeightsError, OSError, RuntimeError) as err:
            if not cfg["random_fallback"]:
                raise
            reason = f"weights {pretrained!r} could not be loaded ({err})"
    logger.warning("!" * 100)
    logger.warning("RANDOM WEIGHTS: %s. %s", reason, RANDOM_WEIGHTS_WARNING)
    logger.warning("!" * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ClipBackbone(cfg["backbone"], None, layers, allow_random_init=True), reason


def dataset_path(name_or_path: str, data_dir: Path | None) -> Path:
    p = Path(name_or_path)
    if p.exists():
        return p
    if data_dir is None:
        raise InputDataError(f"dataset {name_or_path!r} not found and no data dir (set ULTRAAD_DATA_DIR or --data-dir)")
    return data_dir / name_or_path


def fingerprint(cfg: dict[str, Any], backbone: ClipBackbone, targets: dict[str, list[dict]]) -> str:
    """What the numbers depend on; a results folder is only resumed by a run with the same fingerprint."""
    key = {k: cfg[k] for k in ("split_seed", "test_fraction", "max_val_per_class", "train_dataset", "method_options")}
    key["backbone"] = backbone.feature_key
    key["targets"] = {name: sorted(str(it["id"]) for it in items) for name, items in targets.items()}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_features(store, items: list[dict]) -> None:
    """Run the frozen backbone once over every image the run needs (cache misses only), with one progress bar."""
    bar = tqdm(total=len(items), desc="backbone features (cached once)", unit="img")
    store.progress, progress = False, store.progress
    try:
        for chunk, _ in store.iter_batches(items, batch_size=store.batch_size):
            bar.update(len(chunk))
    finally:
        store.progress = progress
        bar.close()


def save_thumbs(path: Path, thumbs: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    ids = sorted(thumbs)
    np.savez_compressed(buf, ids=np.array(ids), maps=np.stack([thumbs[i] for i in ids]) if ids else np.zeros(0))
    atomic_write_bytes(path, buf.getvalue())


def load_thumbs(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {str(i): m for i, m in zip(z["ids"], z["maps"])} if z["maps"].size else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--pretrained", help="open_clip tag, local weight file, or 'random'")
    parser.add_argument("--backbone", help="open_clip architecture, e.g. ViT-L-14-336")
    parser.add_argument("--name", help="results folder name under benchmarks/results")
    parser.add_argument("--out", help="results folder (default benchmarks/results/<name>)")
    parser.add_argument("--data-dir", help="folder holding bus_uclm/ and bus_bra/ (default: ULTRAAD_DATA_DIR or ../shared/data)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME=PATH",
                        help="further evaluation dataset (BUSI folder, labels.csv folder or datalist.json); repeatable")
    parser.add_argument("--methods", help="comma-separated method keys (default: the config's)")
    parser.add_argument("--shots", help="comma-separated k values")
    parser.add_argument("--seeds", help="comma-separated seeds")
    parser.add_argument("--cache-dir", help="feature cache folder (default: the config's, else ~/.cache/monai_ultraad)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the finished cells only; list the missing ones, compute nothing")
    parser.add_argument("--fresh", action="store_true", help="discard finished cells of an earlier run")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # recorded as the run's command
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tune_cpu_allocator()
    try:
        return run(args)
    except UltraADError as err:
        logger.error("%s", err)
        return 2


def run(args: argparse.Namespace) -> int:
    overrides = {
        "pretrained": args.pretrained, "backbone": args.backbone, "name": args.name,
        "methods": args.methods.split(",") if args.methods else None,
        "shots": [int(x) for x in args.shots.split(",")] if args.shots else None,
        "seeds": [int(x) for x in args.seeds.split(",")] if args.seeds else None,
        "cache_dir": args.cache_dir,
    }
    cfg = load_config(args.config, overrides)
    for spec in args.target:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputDataError(f"--target {spec!r}: expected NAME=PATH")
        cfg["targets"] = {**cfg["targets"], name: {"dataset": path, "part": "all"}}
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    out = Path(args.out) if args.out else ROOT / "results" / cfg["name"]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg["device"] == "auto" else cfg["device"]

    backbone, random_reason = build_backbone(cfg)
    backbone.to(device)
    train_items = read_dataset(dataset_path(cfg["train_dataset"], data_dir))
    base_split = protocol.make_split(train_items, max(cfg["shots"]), cfg["seeds"][0], cfg)
    target_items: dict[str, list[dict]] = {}
    descriptions: dict[str, str] = {}
    for name, spec in cfg["targets"].items():
        if spec.get("part") == "test":
            items = protocol.stratified_subset(base_split.test, spec.get("max_images"), cfg["split_seed"], ("label",))
            descriptions[name] = (f"In-domain: {len(items)} test images of {spec['dataset']} from patients disjoint "
                                  "from every shot and validation image (same test set for every k and seed)"
                                  + (f", a class-stratified subset of {len(base_split.test)}" if
                                     len(items) < len(base_split.test) else "") + ".")
        else:
            items = read_dataset(dataset_path(spec["dataset"], data_dir))
            full = len(items)
            items = protocol.stratified_subset(items, spec.get("max_images"), cfg["split_seed"],
                                               ("label", "device"))
            descriptions[name] = (f"Unseen site: {len(items)} of {full} images of {spec['dataset']}"
                                  + (" (stratified by class and scanner)" if len(items) < full else "")
                                  + "; no image of it is used for training, validation or thresholds.")
        target_items[name] = items

    fp = fingerprint(cfg, backbone, target_items)
    cells_dir = out / "cells"
    run_file = out / "run.json"
    if run_file.exists() and not args.fresh:
        previous = json.loads(run_file.read_text())
        if previous.get("fingerprint") != fp:
            raise InputDataError(f"{out} holds results of another configuration (fingerprint "
                                 f"{previous.get('fingerprint')} != {fp}); use --fresh or another --name")
    if args.fresh and cells_dir.exists():
        for f in cells_dir.rglob("*"):
            if f.is_file():
                f.unlink()
    run_info = {
        "name": cfg["name"], "fingerprint": fp, "config": cfg, "random_weights": backbone.random_weights,
        "random_reason": random_reason, "backbone": backbone.description, "shots": cfg["shots"],
        "seeds": cfg["seeds"], "split_seed": cfg["split_seed"], "test_fraction": cfg["test_fraction"],
        "max_val_per_class": cfg["max_val_per_class"], "train_dataset": cfg["train_dataset"],
        "targets": descriptions, "command": "python -m benchmarks.run " + shlex.join(args.argv),
        "host": f"{platform.machine()}, {torch.get_num_threads()} threads, {device}",  # no host name in results
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "python": platform.python_version()},
    }
    if args.report_only and run_file.exists():
        # re-rendering a report: the cells were produced by the earlier run's command; keep its provenance
        previous = json.loads(run_file.read_text())
        run_info["report_rendered"] = {"command": run_info["command"], "at": run_info["started"]}
        run_info.update({k: previous[k] for k in ("command", "host", "started", "versions") if k in previous})
    atomic_write_json(run_file, run_info, nan_as_null=True)

    store = engine.build_store(backbone, cache_dir=cfg["cache_dir"] or True, batch_size=cfg["batch_size"],
                               device=device, progress=True)
    splits = {(k, s): protocol.make_split(train_items, k, s, cfg) for k in cfg["shots"] for s in cfg["seeds"]}
    needed = {str(it["id"]): it for sp in splits.values() for it in sp.shots + sp.validation}
    for items in target_items.values():
        needed.update({str(it["id"]): it for it in items})
    targets: list[protocol.Target] = []
    if not args.report_only:  # a report needs no features and no ground truth
        cache_features(store, list(needed.values()))
        targets = [protocol.load_target(name, items, descriptions[name], store, float(cfg["memory_gb"]))
                   for name, items in target_items.items()]
        for target in targets:  # shortcut audit where the dataset says which images carry marks / Doppler
            if target.items and all("marks" in it and "doppler" in it for it in target.items):
                target.audit = shortcut_audit.audit_data(target.items)

    rng = np.random.default_rng(cfg["split_seed"])
    grid_rows: list[dict] = []
    for t_index, items in enumerate(target_items.values()):
        lesions = [it for it in items if it.get("mask") and int(it["label"]) != 0]
        last = t_index == len(target_items) - 1
        n = cfg["grid_images"] - len(grid_rows) if last else cfg["grid_images"] // 2 + 1
        picks = rng.choice(len(lesions), size=min(max(n, 0), len(lesions)), replace=False) if lesions else []
        grid_rows += [lesions[i] for i in sorted(picks)]
    keep_ids = {str(it["id"]) for it in grid_rows}
    grid_k, grid_seed = max(cfg["shots"]), cfg["seeds"][0]

    cells: dict[tuple[str, int, int], dict] = {}
    thumbs: dict[str, dict[str, np.ndarray]] = {}
    cards: dict[str, dict] = {}
    missing: list[str] = []
    total = len(splits) * len(cfg["methods"])
    bar = tqdm(total=total, desc="benchmark cells", unit="cell")
    for (k, seed), split in splits.items():
        data = None
        for key in cfg["methods"]:
            cls = METHODS[key]
            cards[cls.name] = {**cls.card.__dict__, "key": key, "input_resolution": backbone.image_size,
                               "metric_resolution": "original image size"}
            if cfg["method_options"].get(key):  # a shortened schedule is said in the table, next to the numbers
                options = ", ".join(f"{k}={v}" for k, v in cfg["method_options"][key].items())
                cards[cls.name]["notes"] = [*cards[cls.name].get("notes", []), f"run with {options}"]
            path = cells_dir / key / f"k{k}_s{seed}.json"
            thumb_path = path.with_suffix(".npz")
            if path.exists():
                cells[(cls.name, k, seed)] = json.loads(path.read_text())
            elif args.report_only:
                missing.append(f"{key} k={k} seed={seed}")
            else:
                if data is None:
                    data = protocol.fit_data(split, store, backbone, seed)
                bar.set_postfix_str(f"{key} k={k} seed={seed}")
                method = cls(backbone, CLASS_NAMES, **cfg["method_options"].get(key, {}))
                record, kept = protocol.run_cell(method, data, targets, store, cfg["batch_size"],
                                                 keep_ids if (k, seed) == (grid_k, grid_seed) else set())
                record.update(method=cls.name, key=key, k=k, seed=seed, shots=[str(it["id"]) for it in split.shots],
                              random_weights=backbone.random_weights)
                if kept:
                    save_thumbs(thumb_path, kept)
                protocol.write_cell(path, record)
                cells[(cls.name, k, seed)] = record
            if (k, seed) == (grid_k, grid_seed):
                thumbs[cls.name] = load_thumbs(thumb_path)
            bar.update(1)
    bar.close()
    if missing:
        logger.warning("report from finished cells only; %d not computed: %s", len(missing), ", ".join(missing))
        run_info["missing_cells"] = missing
    written = report.write_all(out, run_info, cells, cards, grid_rows, thumbs, CLASS_NAMES)
    for what, path in written.items():
        logger.info("%s: %s", what, path)
    if backbone.random_weights:
        logger.warning("RANDOM WEIGHTS: %s", report.RANDOM_NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
