"""Which of a model's variables an average holds.

The rule: an average holds what training changes. Averaging a variable that
never moves gives the variable back, so only what `fit` changes needs a copy.
By default an average holds

- the model's trainable variables (`model.trainable_weights`, as Keras
  decides them: the variables whose `trainable` flag is set, in a model that
  is trainable), and
- the floating-point state that trainable layers create as non-trainable and
  update themselves in training, such as BatchNormalization's moving
  statistics,

and leaves out what training never changes: the weights of a layer set to
`trainable=False` (a frozen backbone, an embedding frozen by hand), a
variable frozen with `variable.trainable = False`, the base kernels that
LoRA froze (`layer.enable_lora(rank)` keeps the layer trainable, freezes its
kernel and trains two small factors), and the constants of a quantized layer.
A layer quantized to int8 (`model.quantize("int8")`; int4, GPTQ and AWQ
alike) replaces its kernel with a frozen int8 kernel and a frozen float32
`kernel_scale`, constants that no training step changes: neither is held,
the float scale included, while the layer's bias, still trainable, is.
(float8 layers keep their kernel trainable and make their scales trainable
variables that each step overwrites: they are held.) Variables that are not
floating point (counters, seed-generator states, int8 kernels) are never
averaged. The choice is made when a `fit` begins, so un-freezing a layer
between two `fit` calls is seen by the second one.
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
            if layer.trainable and not _quantized(layer):
                trained.update(id(v) for v in internals.created_non_trainable(layer))
        chosen = [v for v in weights if id(v) in trained]
    elif isinstance(variables, str) and variables == ALL:
        chosen = weights
    else:
        chosen = list(_check_list(variables, weights))
    return [v for v in chosen if backend.is_float_dtype(v.dtype)]


def _quantized(layer) -> bool:
    """Whether `layer` is quantized (its non-trainable variables are constants).

    A quantized layer's non-trainable variables are the quantization's frozen
    kernel and its scales (and, for int4/GPTQ/AWQ, zero points and group
    indices), which training never changes; float8's own scales are
    trainable, so leaving out its non-trainable variables drops none of them.
    """
    return getattr(layer, "quantization_mode", None) is not None


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
