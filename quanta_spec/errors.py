"""The base of every error that is the user's to fix.

It lives here, free of TensorFlow, so that the API, the worker and the library all
recognise the same errors.
"""


class QuantaError(Exception):
    """A problem with the user's input, files or environment, stated so they can fix it.

    Anything raised as a `QuantaError` is shown to the user as it is (one line on the
    command line, the `error` of a failed job in the service); anything else is a bug.
    """
