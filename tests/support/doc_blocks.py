"""The shell and Python blocks of the project's documents, as the test suite runs them.

Every ```bash, ```sh and ```python block runs, in document order, as written: only the
service's address is replaced by the test's. A block that cannot run here says so on
the line just above its fence, with its reason:

    <!-- doc-test: skip (needs the CIFAR archives) -->

so that a new block is covered unless someone writes down why not.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO

DOCUMENTS = (REPO / "README.md", REPO / "docs" / "service.md")
RUNNABLE = ("bash", "sh", "python")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
_SKIP = re.compile(r"<!-- doc-test: skip \((.+?)\) -->\s*$")
#: The addresses the documents give the service at.
ADDRESSES = ("http://127.0.0.1:8000", "localhost:8000")


@dataclass(frozen=True)
class Block:
    document: Path
    line: int
    language: str
    code: str
    skip: str | None  # the reason, when the block is marked to be skipped

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    """The runnable blocks of `document`, in order."""
    text = document.read_text()
    found = []
    for match in _FENCE.finditer(text):
        if match.group(1) not in RUNNABLE:
            continue
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _SKIP.search(before)
        found.append(Block(document, text[:match.start()].count("\n") + 1, match.group(1),
                           match.group(2), skip.group(1) if skip else None))
    return found


def script(document: Path, url: str, folder: Path) -> str:
    """One bash script of `document`'s blocks that are not skipped, in order, against the
    service at `url`; each Python block is a file in `folder`, run where it stands."""
    parts = []
    for i, block in enumerate(blocks(document)):
        if block.skip is not None:
            continue
        code = block.code
        for address in ADDRESSES:
            code = code.replace(address, url)
        parts.append(f"echo '>>> {block.where}'")
        if block.language == "python":
            path = folder / f"block_{i}.py"
            path.write_text(code)
            parts.append(f"python {shlex.quote(str(path))}")
        else:
            parts.append(code)
    return "\n".join(parts) + "\n"
