"""The averaging callbacks."""

from keras_aswa.callbacks.aswa import ASWA
from keras_aswa.callbacks.swa import SWA

__all__ = ["ASWA", "SWA"]
