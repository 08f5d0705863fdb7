"""The averaging callbacks."""

from keras_aswa.callbacks.aswa import ASWA

__all__ = ["ASWA"]
