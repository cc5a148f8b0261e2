"""Atomic file writes: a reader never sees a half-written result file.

Every writer here follows the same recipe: create a temporary file *in the destination folder*
(so the final ``os.replace`` is a same-filesystem rename, which POSIX and Windows make atomic),
write, flush, ``fsync``, then ``os.replace`` it over the destination. If anything fails before
the rename the temporary file is deleted and any previous destination file is left untouched.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_stream", "atomic_write_text", "to_jsonable"]


def _default_file_mode() -> int:
    """Permissions a freshly ``open()``-ed file would get (``0o666`` minus the umask).

    ``mkstemp`` creates files with mode ``0o600``; without this fix-up every result file would be
    private to the writing user, unlike files written with a plain ``open``. Reading the umask
    requires setting it, so it is restored immediately.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_dir(folder: Path) -> None:
    """Best-effort ``fsync`` of a folder so the rename itself survives a power loss."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; create missing parent folders.

    Args:
        path: destination file. An existing file is replaced only once the new content is
            completely on disk; its permission bits are kept.
        data: the complete file content.

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Raises:
        TypeError: ``data`` is not bytes-like.
        OSError: the folder cannot be created or written; no temporary file is left behind.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write_bytes expects bytes, got {type(data).__name__} for {path}")
    return atomic_write_stream(path, lambda fh: fh.write(data))


def atomic_write_stream(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Atomically write whatever ``write(fh)`` writes into the open binary file ``fh``.

    For content produced piece by piece (a DICOM object with buffered Pixel Data): it goes to disk as it is made,
    never held whole in memory. Same guarantees as :func:`atomic_write_bytes`.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    mode = dest.stat().st_mode & 0o7777 if dest.exists() else _default_file_mode()
    # A hidden, uniquely named sibling: same filesystem as dest, invisible to glob("*.png").
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        # BaseException too: a Ctrl-C in the middle must not leave stray ".tmp" files.
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    fsync_dir(dest.parent)
    return dest


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text expects str, got {type(text).__name__} for {path}")
    return atomic_write_bytes(path, text.encode(encoding))


def to_jsonable(obj: Any, nan_as_null: bool = False) -> Any:
    """Convert numpy / torch scalars and arrays and paths inside ``obj`` to plain JSON types.

    Anything else that ``json`` cannot handle is left as is, so serialisation still fails loudly.
    With ``nan_as_null`` non-finite floats become ``None`` (strict JSON has no NaN/Infinity).
    """
    # Imported lazily: io_utils must stay importable (and cheap) without the numeric stack.
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a hard dependency of the package
        np = None  # type: ignore[assignment]

    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch.Tensor without importing torch
        obj = obj.detach().cpu().tolist()
    elif np is not None and isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif np is not None and isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float):
        return None if nan_as_null and not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: to_jsonable(v, nan_as_null) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, nan_as_null) for v in obj]
    return obj


def atomic_write_json(
    path: str | os.PathLike[str],
    obj: Any,
    *,
    indent: int | None = 2,
    nan_as_null: bool = False,
    sort_keys: bool = False,
) -> Path:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically.

    numpy / torch values are converted with :func:`to_jsonable`. The object is serialised
    completely *before* the file system is touched, so an object that is not JSON-serialisable
    raises :class:`TypeError` and leaves neither the destination nor a temporary file behind.

    Args:
        path: destination file.
        obj: JSON-compatible object (dict, list, numbers, strings, numpy/torch values).
        indent: passed to :func:`json.dumps`.
        nan_as_null: write NaN/inf as ``null`` (strict JSON). By default Python's ``NaN`` token is
            written, which :func:`json.load` reads back but strict parsers reject.
        sort_keys: passed to :func:`json.dumps`.
    """
    text = json.dumps(to_jsonable(obj, nan_as_null), indent=indent, sort_keys=sort_keys, allow_nan=True)
    return atomic_write_text(path, text + "\n")
