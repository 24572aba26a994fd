"""The QUANTA REST job service (FastAPI).

Nothing in this package imports TensorFlow, Keras or `quanta`: the API must start
fast and stay small; the training happens in `worker`, which imports TensorFlow.
"""
