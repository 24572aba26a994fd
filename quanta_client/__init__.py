"""A client of the QUANTA job service: `quanta-client` and the `Client` class.

Deliberately light (httpx and tqdm, no TensorFlow): it runs wherever the experiments'
inputs are, and the service does the training.
"""

from quanta_client.api import ApiError, Client, ClientError, Unreachable

__all__ = ["ApiError", "Client", "ClientError", "Unreachable"]
