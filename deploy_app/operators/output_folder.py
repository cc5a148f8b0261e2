"""The output folder as a PACS watcher sees it: one run at a time, and each source's objects appear together or not.

* **One run per folder**: :meth:`OutputFolder.open` takes an exclusive ``flock`` on ``.ultraad.lock``; a second run
  into the same folder stops at once with :class:`OutputFolderError` ("another UltraAD run (pid N) is writing into
  ...") before it reads anything, and writes nothing (not even a report: the report is the first run's). The kernel
  drops the lock when a run ends, however it ends (kill -9 included), so a stale lock never blocks the next run.
* **Fail fast**: before the model is loaded, the folder is created if needed, a probe file is written, fsync-ed and
  removed, and the free space is compared with what the largest source will need.
* **All or nothing per source**: every object of a source is written into its own folder under the hidden
  ``.ultraad-staging/`` (same file system, so renames are atomic); :meth:`publish` then renames the files into the
  output folder one after another with SIGTERM/SIGINT blocked, after writing a ``PUBLISH`` list. A failure before that
  removes the source's staging folder: nothing of it becomes visible. Temporary files only ever exist inside
  ``.ultraad-staging/`` (hidden: watchers ignore dot-folders, and no ``*.dcm`` is ever written at the top level until
  it is complete).
* **Stale staging**: a run killed with SIGKILL leaves ``.ultraad-staging/``; the next run (holding the lock, so no
  other run can be using it) removes every source folder without a ``PUBLISH`` list, and finishes the publication of
  one that has it (the kill came between two renames of a source whose objects were all written).
* **Report**: :meth:`write_report` writes ``ultraad_run.json`` through the staging folder and a rename; it never
  raises, it returns the reason it could not write.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import uuid
from collections.abc import Iterable
from pathlib import Path

from monai_ultraad.io_utils import fsync_dir

logger = logging.getLogger("ultraad.deploy")

LOCK_NAME = ".ultraad.lock"
STAGING_NAME = ".ultraad-staging"
REPORT_NAME = "ultraad_run.json"
PUBLISH_LIST = "PUBLISH"
#: Kept free beyond the estimate of the largest source (the report, file system slack).
SPARE_BYTES = 8 * 1024 * 1024


class OutputFolderError(RuntimeError):
    """The output folder cannot be used (not writable, full, or another run holds it); one line, names the folder."""


class OutputFolder:
    """An output folder held by this run (see the module docstring)."""

    def __init__(self, root: Path, lock_fd: int) -> None:
        self.root = root
        self.staging = root / STAGING_NAME
        self._lock_fd = lock_fd

    # -- opening ------------------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> OutputFolder:
        """Create ``root`` if needed, lock it, tidy stale staging and check that it is writable.

        Raises:
            OutputFolderError: another run holds the folder, or it cannot be created, written or has too little space.
        """
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputFolderError(f"output folder {root} cannot be used: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise OutputFolderError(
                    f"another UltraAD run{holder} is writing into {root}; wait for it to finish or choose another "
                    "output folder (nothing was read or written)"
                ) from None
            raise OutputFolderError(f"output folder {root} cannot be locked: {exc.strerror or exc}") from None
        folder = cls(root, fd)
        try:
            _write_holder(fd)
            folder._recover_stale_staging()
            folder._probe()
        except OutputFolderError:
            folder.close()
            raise
        except OSError as exc:
            folder.close()
            raise OutputFolderError(f"output folder {root} is not writable: {exc.strerror or exc}") from None
        return folder

    def close(self) -> None:
        """Remove the (empty) staging folder and release the lock."""
        try:
            if self.staging.is_dir() and not any(self.staging.iterdir()):
                self.staging.rmdir()
        except OSError:
            pass
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _probe(self) -> None:
        self.staging.mkdir(exist_ok=True)
        probe = self.staging / f"probe-{uuid.uuid4().hex}"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"\0" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise OutputFolderError(f"output folder {self.root} is not writable: {exc.strerror or exc}") from None
        finally:
            probe.unlink(missing_ok=True)

    def check_space(self, needed_bytes: int) -> None:
        """Raise :class:`OutputFolderError` unless ``needed_bytes`` (the largest source's objects) + a spare fit."""
        free = shutil.disk_usage(self.root).free
        if free < needed_bytes + SPARE_BYTES:
            raise OutputFolderError(
                f"output folder {self.root} has {free / 2**20:.1f} MiB free, the largest source needs about "
                f"{(needed_bytes + SPARE_BYTES) / 2**20:.1f} MiB (nothing was processed)"
            )

    def _recover_stale_staging(self) -> None:
        """Remove what a killed run left in the staging folder, finishing publications that were under way."""
        if not self.staging.is_dir():
            return
        for entry in sorted(self.staging.iterdir()):
            if entry.is_dir() and (entry / PUBLISH_LIST).is_file():
                names = (entry / PUBLISH_LIST).read_text().split()
                self._rename_all(entry, names)
                logger.warning("finished publishing %d object(s) left by an interrupted run", len(names))
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            logger.warning("removed stale staging %s left by an interrupted run", entry.name)

    # -- per source ---------------------------------------------------------------------------------------------------

    def stage(self) -> Path:
        """A new, empty staging folder for the objects of one source."""
        folder = self.staging / f"source-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        return folder

    def publish(self, staged: Path, files: Iterable[Path]) -> list[Path]:
        """Move the staged ``files`` (all inside ``staged``) into the output folder, as one set.

        Raises:
            OSError: the move failed; whatever was already moved is taken back and ``staged`` is removed.
        """
        names = [Path(f).name for f in files]
        for name in names:
            if not (staged / name).is_file():
                self.discard(staged)
                raise OSError(errno.ENOENT, f"cannot publish {name}: not in the staging folder")
        blocked = {signal.SIGTERM, signal.SIGINT}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # no signal between the renames of one set
        try:
            _atomic_text(staged / PUBLISH_LIST, "\n".join(names) + "\n")
            try:
                self._rename_all(staged, names)
            except OSError:
                for name in names:  # take back what was moved, so that nothing of the set stays visible
                    try:
                        os.rename(self.root / name, staged / name)
                    except OSError:
                        pass
                self.discard(staged)
                raise
            fsync_dir(self.root)
            shutil.rmtree(staged, ignore_errors=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return [self.root / name for name in names]

    def _rename_all(self, staged: Path, names: list[str]) -> None:
        for name in names:
            if (staged / name).exists():
                os.rename(staged / name, self.root / name)

    def discard(self, staged: Path) -> None:
        """Remove a source's staging folder and everything in it."""
        shutil.rmtree(staged, ignore_errors=True)

    # -- report -------------------------------------------------------------------------------------------------------

    def write_report(self, summary: dict) -> str | None:
        """Write ``ultraad_run.json`` atomically; return None, or the reason it could not be written (never raises)."""
        try:
            return write_report_file(self.root, summary, temp_dir=self.staging)
        except Exception as exc:  # noqa: BLE001 - the report must never turn a run into a traceback
            return f"{type(exc).__name__}: {exc}"


def write_report_file(root: Path, summary: dict, temp_dir: Path | None = None) -> str | None:
    """Write ``root/ultraad_run.json`` through a temporary file in ``temp_dir`` (default: a hidden file in ``root``)
    and a rename; return None, or the reason it failed (nothing half-written is left)."""
    try:
        text = json.dumps(summary, indent=2)
        folder = temp_dir if temp_dir is not None and temp_dir.is_dir() else root
        tmp = folder / f".{REPORT_NAME}.{uuid.uuid4().hex}.tmp"
        try:
            _atomic_text(tmp, text)
            os.replace(tmp, root / REPORT_NAME)
        finally:
            tmp.unlink(missing_ok=True)
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"


def estimated_output_bytes(rows: int, cols: int, frames: int) -> int:
    """Upper estimate of the space a source takes while it is written: its objects - overlay (RGB, uncompressed),
    FRACTIONAL SEG (1 byte), BINARY SEG (1 bit), the viewer SEGs (1 bit, one object with its own header per frame)
    and their .seg.nrrd (at most 1 byte, before compression), the two SRs and headers - and the unnamed files its
    staging holds meanwhile: the float16 heatmaps (2 bytes) and the overlay's spooled frames (3 bytes, while the
    overlay is written; a SEG's spooled frames, at most 1 byte, are gone by then)."""
    frames = max(int(frames), 1)
    pixels = int(rows) * int(cols) * frames
    per_frame_headers = frames * 68 * 1024  # one viewer SEG (~64 KiB header) and one .seg.nrrd header per frame
    objects = pixels * 3 + pixels + pixels // 8 + pixels // 8 + pixels + per_frame_headers + 2 * 1024 * 1024
    return objects + pixels * 2 + pixels * 3


def _atomic_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _write_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
