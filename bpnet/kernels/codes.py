"""Activation codes shared by the kernels, their twins and the layers (no numba import here)."""

IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH = 0, 1, 2, 3, 4
