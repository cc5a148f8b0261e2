"""What happened to every input file in one run: processed, skipped (not a target) or failed (could not be used).

Shared by the operators of one application run; ``__main__`` turns it into the exit code and writes it as
``ultraad_run.json`` (file names and reasons only, never patient data).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("ultraad.deploy")


@dataclass
class RunReport:
    processed: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)  # flagged by the input gate, --refuse-flagged
    input_quality: dict[str, dict] = field(default_factory=dict)  # file name -> the input gate's flags
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def skip(self, path: Path | str, reason: str) -> None:
        """A file that is not a target (another modality, a SEG or SR already in the folder, a hidden file)."""
        with self._lock:
            self.skipped.append({"file": Path(path).name, "reason": reason})
        logger.info("skipped %s: %s", Path(path).name, reason)

    def fail(self, path: Path | str, reason: str) -> None:
        """A file that should have been processed but could not be (not DICOM, truncated, undecodable, ...)."""
        with self._lock:
            self.failed.append({"file": Path(path).name, "reason": reason})
        logger.warning("failed %s: %s", Path(path).name, reason)

    def quality(self, path: Path | str, flags: dict) -> None:
        """The input gate's answer for a file (monai_ultraad.quality.InputQuality.to_dict())."""
        with self._lock:
            self.input_quality[Path(path).name] = flags

    def refuse(self, path: Path | str, reason: str) -> None:
        """A target the input gate flagged and the run was told to refuse (not analysed, no outputs)."""
        with self._lock:
            self.refused.append({"file": Path(path).name, "reason": reason})
        logger.warning("refused %s", reason)

    def done(self, path: Path | str) -> None:
        with self._lock:
            self.processed.append(Path(path).name)

    def wrote(self, path: Path | str) -> None:
        with self._lock:
            self.outputs.append(Path(path).name)

    @property
    def exit_code(self) -> int:
        """0: every target processed; 1: at least one file failed; 2: nothing was processed at all."""
        if not self.processed:
            return 2
        return 1 if self.failed else 0

    def to_dict(self) -> dict:
        return {"processed": self.processed, "skipped": self.skipped, "failed": self.failed,
                "refused": self.refused, "input_quality": self.input_quality, "outputs": self.outputs,
                "exit_code": self.exit_code}
