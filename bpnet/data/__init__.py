"""Data: IDX, NPZ and CSV readers, and the Dataset that serves scaled float batches.

Inputs stay in their stored dtype (uint8 for MNIST) and are converted a batch at a time by one
fused kernel, so a 60,000-image training set costs 47 MB, not 188. Only dtypes the kernels
cannot read (float16, long double, a foreign byte order) are converted when read. Readers check
what a file says about itself (magic numbers, header sizes) against what it holds before
allocating.
"""

from pathlib import Path

import numpy as np

from ..errors import DataError
from .checks import check_examples, native
from .csv_file import CSV_ENCODING, decode_csv, is_float, read_csv
from .dataset import Dataset
from .idx import read_idx
from .npz import read_npz

__all__ = ["CSV_ENCODING", "Dataset", "decode_csv", "is_float", "read_csv", "read_dataset",
           "read_idx", "read_npz"]


def read_dataset(spec, labels=True):
    """(x, y, source, lines) for a validated dataset spec; x keeps its stored dtype (see
    ``_native``), flattened to 2-D; ``lines`` are the examples' line numbers in a CSV, else
    None. Without ``labels`` (predict), y is None and its file, array or CSV cells are not
    read."""
    fmt, lines = spec["format"], None
    if fmt == "idx":
        x, y = read_idx(spec["images"]), read_idx(spec["labels"]) if labels else None
        source = f"{spec['images']} with {Path(spec['labels']).name}"
    elif fmt == "npz":
        x, y = read_npz(spec["path"], spec["x"], spec["y"] if labels else None)
        source = spec["path"]
    else:
        x, y, lines = read_csv(spec["path"], spec["label"], spec["header"], spec["delimiter"],
                               labels)
        source = spec["path"]
    check_examples(x, y, source)
    x, y = native(x), None if y is None else native(y)
    x = np.ascontiguousarray(x.reshape(len(x), -1))
    if x.dtype.kind == "f" and not np.isfinite(x).all():  # a CSV's cells were checked by line
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise DataError("input has a NaN or infinite value", source=source,
                        where=f"example {row + 1}")
    return x, y, source, lines
