"""Image datasets given as a zip of class folders (`images:PATH.zip`), TensorFlow- and
Pillow-free: the names, the resize methods, and the one reading of a zip's layout that the
library's loader (`quanta.image_folders`) and the service's checks
(`quanta_jobs.file_checks`) share, so that both agree on which member is which class and
which split, and refuse the same member names.

The layout is the one `keras.utils.image_dataset_from_directory` reads:

- `train/<class>/<image>` and `test/<class>/<image>`, both present, with the same class
  folders; or
- `<class>/<image>` only: then every `HELD_OUT_EVERY`-th image of each class (the 5th,
  10th... by sorted file name) is held out as the test split (20%), the same every time.

One common top folder (`digits/train/0/a.png`, as zip tools add) is allowed. Files at the
top of the zip (a README) and the clutter of archivers and file browsers (`__MACOSX/`,
`.DS_Store` and other names starting with a dot, `Thumbs.db`, `desktop.ini`) are ignored.
Classes are the sorted folder names, labelled 0..K-1. Samples are interleaved class by
class (each class's first image, then each class's second...), so that the first N
samples that `nb_of_samples` keeps hold every class, as a shuffled dataset's would.
"""

from __future__ import annotations

import re
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from numbers import Integral
from typing import Literal

#: The task prefix of an image zip, as `npz:` is that of an `.npz` file.
IMAGES_PREFIX = "images:"
#: How images are brought to another size: Pillow's filters of these names (`area` is
#: Pillow's BOX, the mean over each output pixel's area).
ResizeMethod = Literal["bilinear", "nearest", "bicubic", "area", "lanczos"]
RESIZE_METHODS: tuple[ResizeMethod, ...] = ("bilinear", "nearest", "bicubic", "area", "lanczos")
DEFAULT_RESIZE_METHOD: ResizeMethod = "bilinear"
#: The formats an image zip may hold, as Pillow names them (recognised by content, never
#: by extension). A GIF gives its first frame.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF")
#: The same, for messages.
FORMATS_TEXT = "PNG, JPEG, BMP or GIF"
#: In a zip of class folders alone, every HELD_OUT_EVERY-th image of a class (by sorted
#: file name) is in the test split: 1 / 5 = 20%.
HELD_OUT_EVERY = 5
#: Defaults of the service's limits (`QUANTA_MAX_IMAGE_FILES`, `QUANTA_MAX_IMAGE_PIXELS`).
MAX_IMAGE_FILES = 100_000
MAX_IMAGE_PIXELS = 4096 * 4096
#: More classes than this is taken as a mistake, not a task (as for `.npz` labels).
MAX_CLASSES = 10_000
SPLITS = ("train", "test")
#: Members that archivers and file browsers add, never images of a class.
_CLUTTER_NAMES = frozenset({"__macosx", "thumbs.db", "ehthumbs.db", "desktop.ini"})
_DRIVE = re.compile(r"^[A-Za-z]:")
_LAYOUT_HELP = ("expected train/<class>/<image> and test/<class>/<image>, or <class>/<image> "
                f"(every {HELD_OUT_EVERY}th image of each class then held out for testing)")


#: Pillow modes of images that store one grey channel (any depth, with or without alpha):
#: a zip of these alone loads as 1 channel, else as 3 (RGB).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclass(frozen=True)
class ImageZipLayout:
    """Which member of the zip is which sample: (member name, label) per split, in the
    order the arrays hold them (interleaved class by class)."""

    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]
    held_out: bool  # True: `<class>/<image>`, the test split held out of each class
    top: str | None  # the common top folder, if the zip has one

    @property
    def members(self) -> tuple[tuple[str, int], ...]:
        return self.train + self.test


def image_zip_path(task: str) -> str | None:
    """The path of an `images:PATH` task, or None for any other task."""
    return task[len(IMAGES_PREFIX):] if task.startswith(IMAGES_PREFIX) else None


def is_symlink(info: zipfile.ZipInfo) -> bool:
    """A member stored as a symbolic link (Unix mode S_IFLNK in its external attributes):
    what it holds is a path on the machine that made the zip, never an image."""
    return stat.S_ISLNK(info.external_attr >> 16)


def _quoted(name: str) -> str:
    return repr(name[:200])


def _check_name(info: zipfile.ZipInfo) -> list[str]:
    """The member's path as parts; ValueError naming it when it could point outside the
    folder it would be unpacked in, or is not a plain file or folder."""
    name = info.filename
    where = f"its member {_quoted(name)}"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"{where} has control characters in its name")
    if "\\" in name:
        raise ValueError(f"{where} has a backslash in its name; zip paths use '/'")
    if name.startswith("/"):
        raise ValueError(f"{where} is an absolute path; members must be relative")
    if _DRIVE.match(name):
        raise ValueError(f"{where} starts with a drive letter; members must be relative")
    parts = name.rstrip("/").split("/") if not info.is_dir() else name[:-1].split("/")
    if any(part in ("..", ".") for part in parts):
        raise ValueError(f"{where} has a '..' or '.' step in its path; members must stay in "
                         "their folder")
    if any(part == "" for part in parts):
        raise ValueError(f"{where} has an empty folder name ('//') in its path")
    if is_symlink(info):
        raise ValueError(f"{where} is a symbolic link; zip the images themselves")
    return parts


def is_clutter(parts: Sequence[str]) -> bool:
    """A member archivers or file browsers add (`__MACOSX/`, `.DS_Store`, `Thumbs.db`...),
    by its path's parts: ignored, never an image of a class."""
    return any(p.startswith(".") or p.lower() in _CLUTTER_NAMES for p in parts)


def read_layout(infos: Sequence[zipfile.ZipInfo]) -> ImageZipLayout:
    """The classes and splits of a zip of class folders, from its directory alone
    (nothing is inflated); ValueError saying what to fix otherwise."""
    seen: set[str] = set()
    files: list[tuple[list[str], str]] = []
    folders: list[list[str]] = []
    for info in infos:
        parts = _check_name(info)
        if info.filename in seen:
            raise ValueError(f"its member {_quoted(info.filename)} appears twice; zip each "
                             "image once")
        seen.add(info.filename)
        if is_clutter(parts):
            continue
        if info.is_dir():
            folders.append(parts)
        elif len(parts) >= 2:  # a file at the top (README) is no image of a class
            files.append((parts, info.filename))
    if not files:
        raise ValueError(f"it holds no image in class folders; {_LAYOUT_HELP}")
    roots = {parts[0] for parts, _ in files}
    top = None
    if (len(roots) == 1 and not roots & set(SPLITS)
            and any(len(parts) >= 3 for parts, _ in files)):
        (top,) = roots
        files = [(parts[1:], name) for parts, name in files if len(parts) >= 3]
        folders = [parts[1:] for parts in folders if parts[0] == top and len(parts) >= 2]
    else:
        folders = [parts for parts in folders if parts[0] in roots]
    roots = {parts[0] for parts, _ in files}
    if roots & set(SPLITS):
        return _split_layout(files, folders, roots, top)
    return _held_out_layout(files, folders, top)


def _depth_check(files: list[tuple[list[str], str]], depth: int, pattern: str) -> None:
    for parts, name in files:
        if len(parts) > depth:
            raise ValueError(f"its member {_quoted(name)} is nested deeper than {pattern}")
        if len(parts) < depth:
            raise ValueError(f"its member {_quoted(name)} is not in a class folder ({pattern})")


def _classes(names: set[str]) -> tuple[str, ...]:
    classes = tuple(sorted(names))
    if len(classes) < 2:
        raise ValueError(f"it has {len(classes)} class folder ({', '.join(classes)}); a task "
                         "needs at least two")
    if len(classes) > MAX_CLASSES:
        raise ValueError(f"it has {len(classes)} class folders; at most {MAX_CLASSES} (the "
                         "output layer has one unit per class)")
    return classes


def _interleaved(per_class: list[list[str]]) -> tuple[tuple[str, int], ...]:
    """Each class's first member, then each class's second...: (member, label)."""
    return tuple((name, label) for row in zip_longest(*per_class)
                 for label, name in enumerate(row) if name is not None)


def _split_layout(files: list[tuple[list[str], str]], folders: list[list[str]],
                  roots: set[str], top: str | None) -> ImageZipLayout:
    if roots != set(SPLITS):
        missing = [s for s in SPLITS if s not in roots]
        if missing:
            have = next(s for s in SPLITS if s in roots)
            raise ValueError(f"it has a {have}/ folder but no {missing[0]}/ folder with "
                             f"images; {_LAYOUT_HELP}")
        others = ", ".join(sorted(roots - set(SPLITS))[:5])
        raise ValueError(f"it has folders beside train/ and test/ ({others}); {_LAYOUT_HELP}")
    _depth_check(files, 3, "train/<class>/<image> and test/<class>/<image>")
    found = {s: {p[1] for p, _ in files if p[0] == s}
             | {p[1] for p in folders if p[0] == s and len(p) >= 2} for s in SPLITS}
    if found["train"] != found["test"]:
        only = sorted(found["train"] ^ found["test"])[:5]
        raise ValueError(f"train/ and test/ must have the same class folders; "
                         f"{', '.join(only)} is in only one of them")
    classes = _classes(found["train"])
    splits = {}
    for split in SPLITS:
        per_class = [sorted(n for p, n in files if p[0] == split and p[1] == c)
                     for c in classes]
        if split == "train":
            empty = [c for c, names in zip(classes, per_class, strict=True) if not names]
            if empty:
                raise ValueError(f"its class folder train/{empty[0]}/ holds no image; every "
                                 "class needs training images")
        splits[split] = _interleaved(per_class)
    if not splits["test"]:
        raise ValueError("its test/ folders hold no image")
    return ImageZipLayout(classes, splits["train"], splits["test"], False, top)


def _held_out_layout(files: list[tuple[list[str], str]], folders: list[list[str]],
                     top: str | None) -> ImageZipLayout:
    _depth_check(files, 2, "<class>/<image>")
    classes = _classes({p[0] for p, _ in files} | {p[0] for p in folders})
    train: list[list[str]] = []
    test: list[list[str]] = []
    for name in classes:
        members = sorted(n for p, n in files if p[0] == name)
        if not members:
            raise ValueError(f"its class folder {name}/ holds no image")
        test.append(members[HELD_OUT_EVERY - 1::HELD_OUT_EVERY])
        held = set(test[-1])
        train.append([m for m in members if m not in held])
    if not any(test):
        raise ValueError(f"no image is held out for testing: every {HELD_OUT_EVERY}th image of "
                         f"a class is, so a class needs at least {HELD_OUT_EVERY} images (or "
                         "give train/ and test/ folders)")
    return ImageZipLayout(classes, _interleaved(train), _interleaved(test), True, top)


def check_image_shape(image_shape: Sequence[int], channels: Sequence[int] = (1, 3)
                      ) -> tuple[int, int, int]:
    """`image_shape` as (height, width, channels) of positive integers, `channels` one of
    those given; ValueError otherwise."""
    values = tuple(image_shape)
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, int | Integral)
                               or v < 1 for v in values):
        raise ValueError(f"image_shape must be (height, width, channels) of positive "
                         f"integers, not {image_shape}")
    height, width, depth = (int(v) for v in values)
    if depth not in channels:
        raise ValueError(f"image_shape asks for {depth} channels; images are given "
                         f"{' or '.join(map(str, channels))}")
    return height, width, depth


def load_shape(sizes: dict[tuple[int, int], str], grey: bool,
               image_shape: Sequence[int] | None) -> tuple[int, int, int]:
    """(H, W, C) a zip's images are loaded at, from what their headers say: `image_shape`
    when given, else their one size (`sizes`: (width, height) -> a member of that size),
    with 1 channel when every image is grey and 3 otherwise. ValueError when they have
    several sizes and no shape is given."""
    if image_shape is not None:
        return check_image_shape(image_shape)
    if len(sizes) > 1:
        (w1, h1), (w2, h2) = list(sizes)[:2]
        first, second = list(sizes.values())[:2]
        raise ValueError(f"its images have several sizes ({first!r} is {w1}x{h1}, {second!r} "
                         f"is {w2}x{h2}; {len(sizes)} sizes in all): give them one size, or use "
                         "a network with a fixed input (a source_model), which resizes them")
    ((width, height),) = sizes
    return height, width, 1 if grey else 3
