"""Writing a file so that a crash never leaves it half-written.

Every writer in the project (the library's exports, dataset downloads, plots, the
worker's checkpoints, the client's downloads, the API's uploads) writes under a
temporary name in the target's own folder and then renames it over the final name,
which is atomic on POSIX file systems: a reader sees the old file or the new one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Part of every temporary name, so that leftovers of a crash are recognisable.
PARTIAL = ".partial"


def partial_path(folder: str | Path, name: str, suffix: str = "") -> Path:
    """A new, empty, uniquely named file in `folder` (created if missing) for writing
    `name`; hidden (a leading dot) and ending in `.partial{suffix}`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f"{PARTIAL}{suffix}", dir=folder)
    os.close(fd)
    return Path(tmp)


@contextmanager
def replacing(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path next to `path` that replaces `path` once the block ends
    without an error; on an error the temporary file is removed and `path` is untouched.

    `suffix` ends the temporary name, for writers that choose a format by extension.
    Only a regular file (or nothing) is replaced: renaming over `/dev/null`, a pipe or a
    socket would put a plain file in its place for every other program on the host.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise FileExistsError(f"{path} exists and is not a regular file: not replacing it")
    tmp = partial_path(path.parent, path.name, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write `data` (text is UTF-8) to `path` atomically and durably (fsync before the
    rename, so a power cut leaves the old content or the new, never an empty file)."""
    path = Path(path)
    content = data.encode() if isinstance(data, str) else data
    with replacing(path, path.suffix) as tmp, open(tmp, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())
    return path
