"""Layers, built by name from the registry ``LAYERS`` (the YAML ``type:`` key)."""

from .base import LAYERS, Layer, Param, register
from .activations import ACTIVATION_TYPES, Activation, LeakyReLU, ReLU, Sigmoid, Tanh
from .affine import Affine
from .dropout import Dropout

__all__ = ["LAYERS", "Layer", "Param", "register", "Activation", "ACTIVATION_TYPES",
           "Affine", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Dropout"]
