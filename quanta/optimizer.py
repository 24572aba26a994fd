"""The optimizer QUANTA targets train (and are saved) with: Adam, with a learning rate of
its own for the quanta weights.

It imports nothing of this project at import time: `import quanta` registers it with
Keras while Keras itself is being imported (see `quanta/__init__.py`).
"""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="quanta")
class QuantaAdam(keras.optimizers.Adam):
    """Adam with its own learning rate for the quanta weights: `multiplier` times the rest.

    Adam divides each step by the gradient's running scale, so a factor on the quantas'
    gradient leaves their update as it was; a factor on their learning rate is what makes
    them move faster (or slower) than the network's weights.

    Example:
        model.compile(optimizer=QuantaAdam(30.0, learning_rate=2e-4), loss=...)
    """

    def __init__(self, quanta_learning_rate_multiplier: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if quanta_learning_rate_multiplier <= 0:
            raise ValueError("quanta_learning_rate_multiplier must be > 0, got "
                             f"{quanta_learning_rate_multiplier}")
        self.quanta_learning_rate_multiplier = float(quanta_learning_rate_multiplier)

    def build(self, var_list: list[Any]) -> None:
        super().build(var_list)
        # The backend hands update_step its own variables, not Keras's: match by key.
        self._quanta_keys = {self._var_key(v) for v in var_list if is_quanta_variable(v)}

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if (self.quanta_learning_rate_multiplier != 1.0
                and self._var_key(variable) in self._quanta_keys):
            learning_rate = learning_rate * self.quanta_learning_rate_multiplier
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(),
                "quanta_learning_rate_multiplier": self.quanta_learning_rate_multiplier}


def is_quanta_variable(variable: Any) -> bool:
    from quanta.layer import WEIGHTS_NAME  # not at import time: see the module's docstring

    return variable.name == WEIGHTS_NAME
