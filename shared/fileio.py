"""Writing files so a reader or a crash sees the old file or the whole new one, never a part.

The one way the product replaces a file: :func:`write_atomic` for bytes and text,
:func:`replacing` for writers that want a path (``np.savez``, ``torch.save``).
Both write a temporary file beside the target, fsync it, and rename it over the
target in one step; on an error the target is left as it was.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a fsynced temporary file and one rename."""
    with replacing(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to (same suffix, so numpy and torch keep the
    name as given); when the block ends it is fsynced and renamed over ``path``; when the
    block raises it is removed and ``path`` is untouched. The temporary name is unique, so
    two processes writing the same file never write into each other's."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
