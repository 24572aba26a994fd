"""QUANTA (QUANtitative TrAnsferability), KES 2021.

Importing `quanta` registers the QUANTA layer with Keras, so a saved target model
loads back with plain `keras.saving.load_model`.
"""

from quanta.errors import Cancelled, QuantaError
from quanta.layer import QuantaLayer, quanta_layers

__version__ = "0.1.0"

__all__ = ["Cancelled", "QuantaError", "QuantaLayer", "__version__", "quanta_layers"]
