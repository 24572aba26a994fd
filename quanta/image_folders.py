"""Decoding a zip of class folders of images (`images:PATH.zip`) with Pillow, and the one
resizer of the project (`fit_images`).

TensorFlow-free, like `quanta.datasets`, which dispatches `images:` tasks here and wraps
what comes back in its `Dataset`. Which member is which class and split is
`quanta_spec.images.read_layout`, the rule the service's checks apply too; every image
is recognised by its content (Pillow's detected format, PNG, JPEG, BMP or GIF), never by
its extension. Images are brought to one mode and size with the same Pillow calls as
`fit_images`, so a dataset resized here and one resized from arrays are the same pixels.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from quanta_spec.images import (
    DEFAULT_RESIZE_METHOD,
    FORMATS_TEXT,
    GREY_MODES,
    IMAGE_FORMATS,
    RESIZE_METHODS,
    ImageZipLayout,
    check_image_shape,
    load_shape,
    read_layout,
)

#: Pillow's resampling filter of each method (`area`: the mean over each output pixel's
#: footprint, Pillow's BOX).
_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
assert set(_FILTERS) == set(RESIZE_METHODS)
#: The Pillow mode of each channel count a Dataset holds.
_MODE_OF_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True)
class ImageArrays:
    """A zip's images and labels, before `quanta.datasets` makes them a `Dataset`."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]


def _check_method(method: str) -> Image.Resampling:
    try:
        return _FILTERS[method]
    except KeyError:
        raise ValueError(f"unknown resize method '{method}'; use one of "
                         f"{', '.join(RESIZE_METHODS)}") from None


def _fit(image: Image.Image, height: int, width: int, method: Image.Resampling
         ) -> Image.Image:
    """Pillow's resize to (height, width), or the image itself at that size already."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), resample=method)


def fit_images(x: np.ndarray, image_shape: tuple[int, int, int],
               method: str = DEFAULT_RESIZE_METHOD) -> np.ndarray:
    """`x` (uint8, N x H x W x C) as images of `image_shape` (H, W, C): channels first
    converted as Pillow converts modes (1 -> 3 repeats the grey channel; 3 -> 1 is the
    luminance of Pillow's "L"; an alpha channel is dropped), then each image resized with
    Pillow's filter of `method` (`quanta_spec.images.RESIZE_METHODS`). `x` itself when it
    already has that shape.

    One function for every resize (image zips, `.npz` files, built-in tasks fed to a
    network of another input size), so that the same pixels give the same inputs.
    """
    resample = _check_method(method)
    if x.dtype != np.uint8 or x.ndim != 4 or not 1 <= x.shape[3] <= 4:
        raise ValueError(f"fit_images takes uint8 (N, H, W, C) images with C 1-4, not "
                         f"{x.dtype} {x.shape}")
    height, width, channels = check_image_shape(image_shape, (1, 3, x.shape[3]))
    if x.shape[1:] == (height, width, channels):
        return x
    out = np.empty((len(x), height, width, channels), np.uint8)
    mode = _MODE_OF_CHANNELS[channels]
    for i, pixels in enumerate(x):
        image = Image.fromarray(pixels[..., 0] if x.shape[3] == 1 else pixels)
        if image.mode != mode and not (image.mode == "L" and mode == "RGB"):
            image = image.convert(mode)
        image = _fit(image, height, width, resample)
        if image.mode == "L" and mode == "RGB":
            # Grey to colour repeats the channel, so resizing one channel is enough.
            out[i] = np.asarray(image)[..., np.newaxis]
        else:
            out[i] = np.asarray(image).reshape(height, width, channels)
    return out


@contextmanager
def _opened(archive: zipfile.ZipFile, name: str) -> Iterator[Image.Image]:
    """The member as a Pillow image, its header read (its pixels not yet decoded); the
    member is closed at the end (Pillow leaves a file object it was given open)."""
    with archive.open(name) as handle, Image.open(handle, formats=IMAGE_FORMATS) as image:
        yield image


def _as_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` (its first frame) in mode "L" or "RGB"; 16- and 32-bit greys are scaled
    to 8 bits rather than clipped."""
    image.seek(0)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image).astype(np.int64)
        grey = np.clip(pixels, 0, 65535) >> 8
        image = Image.fromarray(grey.astype(np.uint8))
    if image.mode == mode:
        image.load()
        return image
    return image.convert(mode)


def _headers(archive: zipfile.ZipFile, layout: ImageZipLayout
             ) -> tuple[dict[tuple[int, int], str], bool]:
    """The sizes found ((width, height) -> one member of that size) and whether every
    image is grey, from the headers alone."""
    sizes: dict[tuple[int, int], str] = {}
    grey = True
    for name, _ in layout.members:
        try:
            with _opened(archive, name) as image:
                sizes.setdefault(image.size, name)
                grey = grey and image.mode in GREY_MODES
        except Image.DecompressionBombError as exc:
            raise ValueError(f"its image '{name}' has more pixels than Pillow decodes "
                             f"({exc})") from exc
        except Exception as exc:  # any failure of the parser: not an image we can use
            raise ValueError(f"its member '{name[:200]}' is not a {FORMATS_TEXT} image "
                             f"({type(exc).__name__}: {str(exc)[:120]})") from exc
    return sizes, grey


def decode_image_zip(path: str | Path, image_shape: tuple[int, int, int] | None = None,
                     resize_method: str = DEFAULT_RESIZE_METHOD) -> ImageArrays:
    """The images of a zip of class folders as uint8 (N, H, W, C) arrays and int64 labels
    (`quanta_spec.images` says the layout). Raises ValueError saying what to fix."""
    resample = _check_method(resize_method)
    try:
        with zipfile.ZipFile(path) as archive:
            layout = read_layout(archive.infolist())
            sizes, grey = _headers(archive, layout)
            height, width, channels = load_shape(sizes, grey, image_shape)
            mode = "L" if channels == 1 else "RGB"
            arrays: dict[str, Any] = {}
            for split, members in (("train", layout.train), ("test", layout.test)):
                x = np.empty((len(members), height, width, channels), np.uint8)
                y = np.fromiter((label for _, label in members), np.int64, len(members))
                for i, (name, _) in enumerate(members):
                    try:
                        with _opened(archive, name) as image:
                            fitted = _fit(_as_mode(image, mode), height, width, resample)
                            x[i] = np.asarray(fitted).reshape(height, width, channels)
                    except Exception as exc:  # damaged past its header
                        raise ValueError(f"its image '{name}' cannot be decoded "
                                         f"({type(exc).__name__}: {str(exc)[:120]})") from exc
                arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
            RuntimeError) as exc:
        raise ValueError(f"it is not a readable zip archive ({exc})") from exc
    return ImageArrays(classes=layout.classes, **arrays)
