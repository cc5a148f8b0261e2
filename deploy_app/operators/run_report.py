"""What happened to every input file in one run: processed, skipped (not a target) or failed (could not be used).

Shared by the operators of one application run; ``__main__`` turns it into the exit code and writes it as
``ultraad_run.json`` (file paths relative to the input folder, reasons and output names only, never patient data).
Each file gets exactly one outcome: a second one for the same file is refused (and logged), so a file can never be
both processed and failed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("ultraad.deploy")


@dataclass
class RunReport:
    input_root: Path | None = None
    processed: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    outputs_by_source: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[dict[str, str]] = field(default_factory=list)
    stopped_by: str | None = None
    aborted: str | None = None
    _decided: set[str] = field(default_factory=set, repr=False)
    refused: list[dict[str, str]] = field(default_factory=list)  # flagged by the input gate, --refuse-flagged
    input_quality: dict[str, dict] = field(default_factory=dict)  # file name -> the input gate's flags
    predictions: dict[str, list[dict]] = field(default_factory=dict)  # file name -> prediction record per frame
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def name(self, path: Path | str) -> str:
        """How the report names a file: its path relative to the input folder (POSIX form)."""
        path = Path(path)
        if self.input_root is not None:
            try:
                return path.relative_to(self.input_root).as_posix()
            except ValueError:
                pass
        return path.name

    def _decide(self, name: str, outcome: str) -> bool:
        if name in self._decided:
            logger.error("internal: second outcome '%s' for %s ignored", outcome, name)
            return False
        self._decided.add(name)
        return True

    def skip(self, path: Path | str, reason: str) -> None:
        """A file that is not a target (not DICOM, DICOMDIR, another modality, a SEG or SR already in the folder)."""
        name = self.name(path)
        with self._lock:
            if self._decide(name, "skipped"):
                self.skipped.append({"file": name, "reason": reason})
        logger.info("skipped %s: %s", name, reason)

    def fail(self, path: Path | str, reason: str) -> None:
        """A DICOM image that should have been processed but could not be (truncated, undecodable, invalid UIDs...)."""
        name = self.name(path)
        with self._lock:
            if self._decide(name, "failed"):
                self.failed.append({"file": name, "reason": reason})
        logger.warning("failed %s: %s", name, reason)

    def quality(self, path: Path | str, flags: dict) -> None:
        """The input gate's answer for a file (monai_ultraad.quality.InputQuality.to_dict())."""
        with self._lock:
            self.input_quality[self.name(path)] = flags

    def refuse(self, path: Path | str, reason: str) -> None:
        """A target the input gate flagged and the run was told to refuse (not analysed, no outputs)."""
        name = self.name(path)
        with self._lock:
            if self._decide(name, "refused"):
                self.refused.append({"file": name, "reason": reason})
        logger.warning("refused %s", reason)

    def done(self, path: Path | str, outputs: list[Path] | None = None, records: list[dict] | None = None) -> None:
        """A processed source: its published objects and its prediction records (monai_ultraad.records, one per
        analysed frame)."""
        name = self.name(path)
        files = [Path(p).name for p in outputs or []]
        with self._lock:
            if self._decide(name, "processed"):
                self.processed.append(name)
                self.outputs.extend(files)
                self.outputs_by_source[name] = files
                if records is not None:
                    self.predictions[name] = list(records)

    def not_start(self, path: Path | str) -> None:
        name = self.name(path)
        with self._lock:
            if self._decide(name, "not started"):
                self.not_started.append(name)

    def warn(self, path: Path | str, warning: str) -> None:
        name = self.name(path)
        with self._lock:
            self.warnings.append({"file": name, "warning": warning})
        logger.warning("%s: %s", name, warning)

    @property
    def exit_code(self) -> int:
        """0: every target processed; 1: some target failed or was not started; 2: nothing was processed at all."""
        if not self.processed:
            return 2
        return 1 if self.failed or self.not_started else 0

    def to_dict(self) -> dict:
        summary = {"processed": self.processed, "skipped": self.skipped, "failed": self.failed,
                   "not_started": self.not_started, "outputs": self.outputs,
                   "outputs_by_source": self.outputs_by_source, "warnings": self.warnings,
                   "refused": self.refused, "input_quality": self.input_quality, "predictions": self.predictions,
                   "exit_code": self.exit_code}
        if self.stopped_by:
            summary["stopped_by"] = self.stopped_by
        if self.aborted:
            summary["aborted"] = self.aborted
        return summary
