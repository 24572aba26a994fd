"""The artifact index: what a job's output folder holds (hashed), and safe lookups in it.

A worker records every file of a finished job (`scan`) so that the API lists and
serves only recorded files. A path asked for by a client is only used if it is a
recorded artifact of the job AND resolves inside the job's folder without a symlink
on the way (`safe_file`); anything else is unknown (we do not say whether it exists).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from quanta_jobs.crud import ArtifactInfo

CHUNK = 1024 * 1024


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_safe_relative(path: str) -> bool:
    """A relative POSIX path with no empty, `.` or `..` part and no backslash or NUL."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    parts = path.split("/")
    return all(part not in ("", ".", "..") for part in parts) and ":" not in parts[0]


def safe_file(root: Path, relative: str) -> Path | None:
    """`root/relative` if it is a regular file inside `root` reached without any symlink."""
    if not is_safe_relative(relative):
        return None
    candidate = root
    for part in relative.split("/"):
        candidate = candidate / part
        if candidate.is_symlink():
            return None
    try:
        real = Path(os.path.realpath(candidate))
        if not real.is_relative_to(Path(os.path.realpath(root))) or not real.is_file():
            return None
    except OSError:
        return None
    return candidate


def scan(root: Path) -> list[ArtifactInfo]:
    """Every regular file under `root` (symlinks skipped), with its size and digest."""
    found: list[ArtifactInfo] = []
    if not root.is_dir():
        return found
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not Path(folder, d).is_symlink())
        for name in sorted(files):
            path = Path(folder, name)
            if path.is_symlink() or not path.is_file():
                continue
            relative = path.relative_to(root).as_posix()
            found.append(ArtifactInfo(relative, path.stat().st_size, sha256_of(path)))
    return found
