"""The artifact index: what a job's output folder holds (hashed), and safe lookups in it.

A worker records every file of a finished job (its path, size and SHA-256) so that the
API lists and serves only recorded files. A path asked for by a client is only used if
it is a recorded artifact of the job and a safe relative path; the store then refuses
any key that could lead outside it, a symlink on the way included
(`quanta_jobs.store`); anything else is unknown (we do not say whether it exists).
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
