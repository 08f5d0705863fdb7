"""Which of a model's variables an average holds.

Only what training changes needs a copy: averaging a variable that never
moves gives the variable back. By default an average holds

- the model's trainable variables (`model.trainable_weights`, as Keras
  decides them: the variables whose `trainable` flag is set, in a model that
  is trainable), and
- the floating-point state that trainable layers create as non-trainable and
  update themselves in training, such as BatchNormalization's moving
  statistics,

and leaves out frozen variables: the weights of a layer set to
`trainable=False` (a frozen backbone, an embedding frozen by hand), a
variable frozen with `variable.trainable = False`, and the base kernels that
LoRA froze (`layer.enable_lora(rank)` keeps the layer trainable, freezes its
kernel and trains two small factors). Variables that are not floating point
(counters, seed-generator states, int8 kernels) are never averaged. The
choice is made when a `fit` begins, so un-freezing a layer between two `fit`
calls is seen by the second one.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras import backend

from keras_aswa import internals

ALL = "all"


def averaged_variables(model, variables: str | Sequence | None = None) -> list:
    """The variables of `model` that an average holds, in `model.weights` order.

    Args:
        model: A built Keras model.
        variables: None for the default rule above; `"all"` for every
            floating-point variable, frozen ones included; or a list of the
            model's own variables (e.g. `model.trainable_variables`).

    Returns:
        The chosen floating-point variables.

    Raises:
        ValueError: If `variables` holds something that is not one of the
            model's variables, or is neither None, `"all"` nor a list.

    Example:

    ```python
    model.layers[0].trainable = False
    held = averaged_variables(model)  # the other layers' variables only
    ```
    """
    weights = list(model.weights)
    if variables is None:
        trained = {id(v) for v in model.trainable_weights}
        for layer in internals.flatten_layers(model):
            if layer.trainable:
                trained.update(id(v) for v in internals.created_non_trainable(layer))
        chosen = [v for v in weights if id(v) in trained]
    elif isinstance(variables, str) and variables == ALL:
        chosen = weights
    else:
        chosen = list(_check_list(variables, weights))
    return [v for v in chosen if backend.is_float_dtype(v.dtype)]


def check_argument(variables) -> None:
    """Raises ValueError at construction for a `variables=` of the wrong kind."""
    if variables is None or (isinstance(variables, str) and variables == ALL):
        return
    if isinstance(variables, str) or not isinstance(variables, Sequence):
        raise ValueError(
            f"variables={variables!r}: pass None (what training changes), "
            f"{ALL!r} (every float variable), or a list of the model's "
            "variables such as model.trainable_variables."
        )


def _check_list(variables, weights):
    check_argument(variables)
    # Keras variables overload ==: compare identities.
    position = {id(v): i for i, v in enumerate(weights)}
    foreign = [getattr(v, "path", repr(v)) for v in variables if id(v) not in position]
    if foreign:
        raise ValueError(
            f"variables= holds {foreign}, which are not variables of the model "
            "being trained (model.weights)."
        )
    chosen = {id(v) for v in variables}
    return [v for v in weights if id(v) in chosen]
