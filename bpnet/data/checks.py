"""What makes arrays a dataset bpnet can train on, whatever file they came from."""

import math

import numpy as np

from ..errors import DataError


def check_examples(x, y, source):
    """Refuse inputs ``x`` and labels ``y`` (None: not wanted) that cannot be a dataset, from
    their shapes and dtypes alone: arrays, or .npy headers before their data is read."""
    for name, a, kinds in (("inputs", x, "uif"), ("labels", y, "uifb")):
        if a is not None and a.dtype.kind not in kinds:
            raise DataError(f"{name} have dtype {a.dtype}, expected numbers", source=source)
        if a is not None and len(a.shape) == 0:
            raise DataError(f"{name} have shape (), expected one example per row", source=source)
    if x.shape[0] == 0:
        raise DataError("the dataset is empty", source=source)
    if y is not None and x.shape[0] != y.shape[0]:
        raise DataError(f"{x.shape[0]} inputs but {y.shape[0]} labels", source=source)
    if math.prod(x.shape[1:]) == 0:
        raise DataError("the examples have no features", source=source)


def native(a):
    """``a`` in a dtype the kernels take: native byte order, float16 widened to float32 and
    long double narrowed to float64 (numba has neither). Other arrays are returned as they are."""
    if a.dtype.kind == "f" and a.dtype.itemsize not in (4, 8):
        return a.astype(np.float32 if a.dtype.itemsize < 4 else np.float64)
    if not a.dtype.isnative:
        return a.astype(a.dtype.newbyteorder("="))
    return a
