"""NPZ files: arrays x and y of a numpy archive, read without pickle, checked from their
.npy headers before their data is read."""

import math
from collections import namedtuple

import numpy as np

from ..errors import DataError
from ..files import npz_archive
from .checks import check_examples


def read_npz(path, x_key, y_key=None):
    """Arrays x and y (None without ``y_key``) from an .npz file, loaded without pickle.

    Their .npy headers are read and checked first, against the sizes the archive records and
    against each other: 2 MB of compressed zeros inflate to 2 GB, which must not be read to
    find that there are too few labels for them.
    """
    with npz_archive(path, DataError) as z:
        missing = [k for k in (x_key, y_key) if k is not None and k not in z.files]
        if missing:
            raise DataError(f"no array named {missing[0]!r}; the file has "
                            f"{', '.join(z.files) or 'none'}", source=path)
        x_head = _npy_head(z.zip, x_key, path)
        y_head = None if y_key is None else _npy_head(z.zip, y_key, path)
        check_examples(x_head, y_head, path)
        return z[x_key], None if y_key is None else z[y_key]


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}
_Head = namedtuple("_Head", "shape dtype")


def _npy_head(archive, key, path):
    """The shape and dtype of array ``key`` of an .npz's zip ``archive``, from its .npy header
    alone, checked against the size the archive records for it."""
    name = key if key in archive.namelist() else key + ".npy"  # as NpzFile finds it
    size = archive.getinfo(name).file_size
    with archive.open(name) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version not in _NPY_HEADER_READERS:
                raise DataError(f"array {key!r} is in .npy format {version[0]}.{version[1]}, "
                                f"expected 1.0 or 2.0", source=path)
            shape, _, dtype = _NPY_HEADER_READERS[version](f)
        except ValueError as e:  # numpy's error for a bad magic string or header
            raise DataError(f"array {key!r} is not a valid .npy array: {e}", source=path) from None
        header_len = f.tell()
    if dtype.hasobject:
        raise DataError("holds an object array, which bpnet never loads (it would need "
                        "pickle)", source=path)
    n_bytes = math.prod(shape) * dtype.itemsize
    if header_len + n_bytes != size:
        raise DataError(f"array {key!r}: truncated or bad header: it promises {header_len} header "
                        f"bytes and {n_bytes} data bytes (shape {shape}, {dtype}), the archive "
                        f"holds {size} bytes for it", source=path)
    return _Head(shape, dtype)
