"""Files a user reads (reports, figures, tables) are written whole or not at all.

``atomic_open`` writes to a temporary name beside the target and renames it over the target
only after everything was written and synced. A full disk or a killed process therefore leaves
the previous file (or none), never a truncated one that looks finished, and no temporary file
behind (docs/robustness.md).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **options: Any) -> Iterator[IO]:
    """Yields a file opened with ``mode`` ("w" or "wb"; ``options`` go to ``open``) that
    replaces ``path`` when the block ends without an error.

    On any error the temporary file is removed, ``path`` keeps its previous content, and an
    ``OSError`` names ``path`` (a write error alone names no file).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    # A unique hidden name in the same folder: the rename stays on one file system, and two
    # writers of the same file never share a temporary. O_EXCL with 0o666 lets the umask give the
    # usual permissions (mkstemp would leave the final file readable by its owner only).
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with open(fd, mode, **options) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as err:
        if err.errno is None or err.filename not in (None, os.fspath(tmp)):
            raise
        # Name the file the user asked for, not the hidden temporary (nor none at all).
        raise OSError(err.errno, err.strerror, os.fspath(path)) from err


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Writes ``text`` to ``path`` whole or not at all (``atomic_open``); returns ``path``."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)
