"""A cine loop's heatmaps on disk instead of in memory.

The DICOM writers need every analysed frame's heatmap (SEGs, SR areas, overlay), but they read them one frame at a
time. :class:`HeatmapSpool` appends each frame's (float16, :func:`~monai_ultraad.inference.compact_heatmap`) heatmap to
an unnamed temporary file as the frames are scored, and hands back a :class:`SpooledHeatmap` in its place: an
array-like (``shape``, ``dtype``, ``np.asarray``) that reads its frame back when it is used. The prediction type stays
:class:`~monai_ultraad.inference.Prediction`; only its ``heatmap`` is the spooled one, so what a loop keeps in memory
no longer grows with its length by a heatmap per frame.

The file has no name (:func:`tempfile.TemporaryFile`): closing it, or a kill, leaves nothing behind. A frame is read
into a fresh array (no memory map), so the pages read do not stay resident in this process.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np


class SpooledHeatmap:
    """One frame's heatmap in a :class:`HeatmapSpool`: read back (a new, writable array) by ``np.asarray``."""

    __slots__ = ("_offset", "_spool", "dtype", "shape")

    def __init__(self, spool: HeatmapSpool, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._spool, self._offset, self.shape, self.dtype = spool, offset, shape, dtype

    def load(self) -> np.ndarray:
        return self._spool.read(self._offset, self.shape, self.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.load()
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"SpooledHeatmap(shape={self.shape}, dtype={self.dtype})"


class HeatmapSpool:
    """Append-only store of heatmaps in an unnamed temporary file in ``folder`` (default: the system's).

    Use it as a context manager or call :meth:`close`; heatmaps read after closing raise ``ValueError``.
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self._file = tempfile.TemporaryFile(dir=None if folder is None else Path(folder))  # noqa: SIM115 - held open
        self._size = 0

    def put(self, heatmap: np.ndarray) -> SpooledHeatmap:
        """Write ``heatmap`` (kept in its dtype) and return its stand-in."""
        array = np.ascontiguousarray(heatmap)
        offset = self._size
        self._file.seek(offset)
        self._file.write(array.data)  # OSError (disk full) reaches the caller: the source fails with its reason
        self._size += array.nbytes
        return SpooledHeatmap(self, offset, tuple(array.shape), array.dtype)

    def spool(self, prediction):
        """The same prediction with its heatmap moved into this spool."""
        return replace(prediction, heatmap=self.put(prediction.heatmap))

    def read(self, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        if self._file.closed:
            raise ValueError("the heatmap spool is closed")
        out = np.empty(shape, dtype)
        self._file.seek(offset)  # (the buffered file flushes what put() left in its write buffer)
        got = self._file.readinto(memoryview(out).cast("B"))
        if got != out.nbytes:
            raise OSError(f"heatmap spool: read {got} of {out.nbytes} bytes")
        return out

    @property
    def nbytes(self) -> int:
        return self._size

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["HeatmapSpool", "SpooledHeatmap"]
