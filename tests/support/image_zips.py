"""Real image zips for the tests of `images:` datasets: scikit-learn's digits (offline),
upsampled to 32x32 and written as PNG, JPEG, BMP or GIF files with Pillow, in either
layout of class folders, and the hostile zips a user could upload instead."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from functools import cache

import numpy as np
from PIL import Image

SIDE = 32  # the built-in networks need three 2x poolings: 8x8 digits are too small


@cache
def digits(side: int = SIDE) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1797 digits as uint8 (N, side, side) images (nearest upsampling) and
    their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.rint(data.images * (255 / 16)).astype(np.uint8)
    scale = side // 8
    return x.repeat(scale, axis=1).repeat(scale, axis=2), data.target.astype(np.int64)


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """One image file of `pixels` ((H, W) grey or (H, W, 3) colour) in Pillow's `fmt`."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def digit_members(per_class: int, classes: int = 10, formats: tuple[str, ...] = ("PNG",),
                  prefix: str = "", colour: bool = False, start: int = 0
                  ) -> dict[str, bytes]:
    """`per_class` images of each digit 0..classes-1 as `{prefix}{digit}/img_NNNN.ext`, the
    formats taken in turn; `colour`: an RGB image (the digit in red, its inverse in blue)."""
    x, y = digits()
    members = {}
    for label in range(classes):
        rows = np.flatnonzero(y == label)[start:start + per_class]
        for i, row in enumerate(rows):
            fmt = formats[(label + i) % len(formats)]
            pixels = x[row]
            if colour:
                pixels = np.stack([pixels, pixels // 2, 255 - pixels], axis=-1)
            ext = {"JPEG": "jpg"}.get(fmt, fmt.lower())
            members[f"{prefix}{label}/img_{row:04d}.{ext}"] = encode(pixels, fmt)
    return members


def held_out_zip(per_class: int = 10, **options: object) -> bytes:
    """`<class>/<image>`: every 5th image of a class is the test split."""
    return zip_bytes(digit_members(per_class, **options))  # type: ignore[arg-type]


def split_zip(train: int = 8, test: int = 3, prefix: str = "", **options: object) -> bytes:
    """`train/<class>/<image>` and `test/<class>/<image>` (different digits in each)."""
    members = digit_members(train, prefix=f"{prefix}train/", **options)  # type: ignore[arg-type]
    members |= digit_members(test, prefix=f"{prefix}test/", start=train,  # type: ignore[arg-type]
                             **options)
    return zip_bytes(members)


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring width x height grey pixels, with a few
    bytes of data: a decompression bomb's header in ~70 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def symlink_zip(target: str = "/etc/passwd") -> bytes:
    """Digit images and one member stored as a symbolic link to `target`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in digit_members(5, classes=2).items():
            archive.writestr(name, content)
        link = zipfile.ZipInfo("1/img_link.png")
        link.create_system = 3  # Unix: the mode is in the high 16 bits
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, target)
    return buffer.getvalue()


def many_members_zip(count: int) -> bytes:
    """`count` empty members in two class folders, stored: ~100 bytes a member."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            archive.writestr(f"{i % 2}/{i:07d}.png", b"")
    return buffer.getvalue()
