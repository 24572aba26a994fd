"""QUANTA (QUANtitative TrAnsferability), KES 2021.

Importing `quanta` registers the project's Keras objects (the QUANTA layer and the
optimizer its targets are saved with) with Keras, so that every model this project saves
loads back with plain `keras.saving.load_model`. It does so without importing Keras
itself: the registration runs when Keras is imported (at once if it already is), so
`quanta --help` and the command lines' usage errors answer without loading TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import wrapt

from quanta.errors import Cancelled, QuantaError

if TYPE_CHECKING:
    from quanta.layer import QuantaLayer, quanta_layers

__version__ = "0.1.0"

__all__ = ["Cancelled", "QuantaError", "QuantaLayer", "__version__", "quanta_layers"]

#: The modules whose classes Keras must know by their registered names.
KERAS_OBJECT_MODULES = ("quanta.layer", "quanta.optimizer")


def _register_keras_objects(_keras: Any) -> None:
    """Imports the modules that register with Keras. One of them may be what is importing
    Keras right now: it is then in `sys.modules`, unfinished, and registers itself once it
    finishes; the others import nothing of this project at import time."""
    import importlib
    import sys

    for name in KERAS_OBJECT_MODULES:
        if name not in sys.modules:
            importlib.import_module(name)


wrapt.register_post_import_hook(_register_keras_objects, "keras")


def __getattr__(name: str) -> Any:
    if name in ("QuantaLayer", "quanta_layers"):
        from quanta import layer

        return getattr(layer, name)
    raise AttributeError(f"module 'quanta' has no attribute {name!r}")
