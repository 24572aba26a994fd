"""How a spec names the researcher's own source network (`source_model`), TF-free.

A source model is a `.keras` file (local path, or a job's or an upload's file in the
service), or a `keras.applications` architecture by name. The API checks the names here
without TensorFlow; the library (`quanta.any_network`) builds what they name.
"""

from __future__ import annotations

import re
from pathlib import PurePath

#: `keras.applications.MobileNetV2`: an architecture by name.
APPLICATION_PREFIX = "keras.applications."
_APPLICATION = re.compile(r"[A-Z][A-Za-z0-9]{1,63}")
#: What a layer name may be where it becomes part of a file name (`{l}`).
LAYER_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
#: How images are prepared for a source model, besides resizing (`preprocess`):
#: `none` gives the pixels (0-255) as they are, the network's own layers doing the rest;
#: `rescale` divides them by 255; `keras.applications.MODULE.preprocess_input` is that
#: module's function (e.g. `keras.applications.mobilenet_v2.preprocess_input`).
PREPROCESS_PLAIN = ("none", "rescale")
_PREPROCESS_MODULE = re.compile(r"keras\.applications\.([a-z][a-z0-9_]{1,40})\.preprocess_input")
#: Most layers one transfer or study may mix at once (`-1`: every transferable layer).
MAX_LAYERS_AT_ONCE = 64


def is_application(text: str) -> bool:
    return text.startswith(APPLICATION_PREFIX)


def application_name(text: str) -> str:
    """`MobileNetV2` of `keras.applications.MobileNetV2`; ValueError when malformed."""
    name = text[len(APPLICATION_PREFIX):]
    if not _APPLICATION.fullmatch(name):
        raise ValueError(f"'{text[:80]}' is not a keras.applications network name "
                         "(e.g. keras.applications.MobileNetV2)")
    return name


def check_source_model(text: str) -> str:
    """A local source model: a `.keras` path or an application name."""
    if is_application(text):
        application_name(text)
        return text
    if not text.endswith(".keras"):
        raise ValueError(f"'{text[:80]}': a source model is a .keras file or "
                         "keras.applications.NAME")
    return text


def check_preprocess(text: str) -> str:
    if text in PREPROCESS_PLAIN or _PREPROCESS_MODULE.fullmatch(text):
        return text
    raise ValueError(f"'{text[:80]}': preprocess is none, rescale or "
                     "keras.applications.MODULE.preprocess_input")


def preprocess_module(text: str) -> str | None:
    """`mobilenet_v2` of `keras.applications.mobilenet_v2.preprocess_input`, else None."""
    match = _PREPROCESS_MODULE.fullmatch(text)
    return match.group(1) if match else None


def check_layer_name(text: str) -> str:
    if not LAYER_NAME.fullmatch(text):
        raise ValueError(f"'{text[:80]}' is not a layer name (letters, digits, '_', '.', "
                         "'-', at most 100)")
    return text


def model_label(source_model: str) -> str:
    """What a source model is called in folder names: the application or the file stem."""
    if is_application(source_model):
        return application_name(source_model)
    return PurePath(source_model.replace("\\", "/")).name.removesuffix(".keras")
