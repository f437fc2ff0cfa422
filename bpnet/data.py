"""Data: IDX, NPZ and CSV readers, and the Dataset that serves scaled float batches.

Inputs stay in their stored dtype (uint8 for MNIST) and are converted a batch at a time by one
fused kernel, so a 60,000-image training set costs 47 MB, not 188. Only dtypes the kernels
cannot read (float16, long double, a foreign byte order) are converted when read. Readers check
what a file says about itself (magic numbers, header sizes) against what it holds before
allocating.
"""

import csv
import math
import zlib
from collections import namedtuple
from pathlib import Path

import numpy as np

from . import kernels
from .errors import DataError

# UTF-8, without the byte-order mark that Excel's "CSV UTF-8" puts before the first name
CSV_ENCODING = "utf-8-sig"
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CHUNK = 1 << 22


class _Gunzip:
    """A .gz file for reading, inflated by zlib from the compressed bytes in memory.

    gzip.open takes the GIL back every 128 KB; here inflate gets 1 MB of input per call and
    runs without the GIL meanwhile, so a session can read its data while the main thread
    imports numba. Members (with zero padding between them) read as one stream, as gzip.open
    reads them.
    """

    FEED = 1 << 20  # compressed bytes per call; zlib copies what a call leaves unconsumed

    def __init__(self, path):
        self._raw = memoryview(path.read_bytes())  # compressed: as large as the disk file
        self._pos, self._pending = 0, b""
        self._inflate = zlib.decompressobj(31)  # 31: expect and check a gzip header and trailer

    def _input(self):
        if not self._pending:
            self._pending = self._raw[self._pos:self._pos + self.FEED]
            self._pos += len(self._pending)
        return self._pending

    def _next_member(self):
        """After a member's end: start the next one, past zero padding. False at the end."""
        self._pending = self._inflate.unused_data.lstrip(b"\0")
        while not self._pending and self._pos < len(self._raw):
            self._pending = bytes(self._input()).lstrip(b"\0")
        if not self._pending:
            return False
        self._inflate = zlib.decompressobj(31)
        return True

    def read(self, n):
        parts = []
        while n > 0:
            if self._inflate.eof and not self._next_member():
                break
            data = self._input()
            if not data:
                if self._pos == 0:  # an empty file reads as empty, as with gzip.open
                    break
                raise EOFError("compressed file ended before the end-of-stream marker was reached")
            part = self._inflate.decompress(data, n)
            self._pending = self._inflate.unconsumed_tail
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._raw.release()


def _open(path):
    path = Path(path)
    try:
        return _Gunzip(path) if path.suffix == ".gz" else open(path, "rb")
    except FileNotFoundError:
        raise DataError("file not found", source=path) from None
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", source=path) from None


def _read_exactly(stream, n, path):
    """Read n bytes in chunks, so a header that lies about the size cannot make us allocate it."""
    parts, got = [], 0
    while got < n:
        part = stream.read(min(_CHUNK, n - got))
        if not part:
            raise DataError(f"truncated: the header promises {n} data bytes, the file holds "
                            f"{got} after the header", source=path)
        parts.append(part)
        got += len(part)
    if stream.read(1):
        raise DataError(f"the file holds more than the {n} data bytes its header promises",
                        source=path)
    return b"".join(parts)


def read_idx(path):
    """An IDX file (plain or .gz) as an array of its stored dtype and shape."""
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_TYPES or not 1 <= head[3] <= 4:
                raise DataError(f"not an IDX file: magic bytes {head.hex() or '(empty)'}, expected "
                                f"00 00, a type code ({', '.join(f'{c:02x}' for c in IDX_TYPES)}) "
                                f"and 1 to 4 dimensions", source=path)
            dims_raw = f.read(4 * head[3])
            if len(dims_raw) < 4 * head[3]:
                raise DataError("truncated in the header", source=path)
            dims = tuple(int(d) for d in np.frombuffer(dims_raw, ">u4"))
            dtype = np.dtype(IDX_TYPES[head[2]])
            n_bytes = int(np.prod(dims, dtype=object)) * dtype.itemsize
            _check_size_plausible(path, n_bytes, 4 + len(dims_raw))
            data = _read_exactly(f, n_bytes, path)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read: {e}", source=path) from None
    return np.frombuffer(data, dtype).astype(dtype.newbyteorder("="), copy=False).reshape(dims)


def _check_size_plausible(path, n_bytes, header_len):
    """Reject a header that promises more data than the file can hold, before reading it.

    Reading then finds any smaller mismatch: it takes what the file holds in chunks.
    """
    path = Path(path)
    size = path.stat().st_size
    if path.suffix == ".gz":
        if n_bytes > 1032 * size + (1 << 16):  # deflate packs at most 1032:1
            raise DataError(f"truncated or bad header: it promises {n_bytes} data bytes, more "
                            f"than {size} compressed bytes can hold", source=path)
    elif n_bytes > size - header_len:
        raise DataError(f"truncated or bad header: it promises {header_len} header bytes and "
                        f"{n_bytes} data bytes, the file has {size} bytes", source=path)


def read_npz(path, x_key, y_key=None):
    """Arrays x and y (None without ``y_key``) from an .npz file, loaded without pickle.

    Their .npy headers are read and checked first, against the sizes the archive records and
    against each other: 2 MB of compressed zeros inflate to 2 GB, which must not be read to
    find that there are too few labels for them.
    """
    try:
        z = np.load(path, mmap_mode="r", allow_pickle=False)  # mapped, not read, if an .npy
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError("not an .npz archive: it holds a single .npy array; save x and y "
                            "with numpy.savez", source=path)
        with z:
            missing = [k for k in (x_key, y_key) if k is not None and k not in z.files]
            if missing:
                raise DataError(f"no array named {missing[0]!r}; the file has "
                                f"{', '.join(z.files) or 'none'}", source=path)
            x_head = _npy_head(z.zip, x_key, path)
            y_head = None if y_key is None else _npy_head(z.zip, y_key, path)
            _check_examples(x_head, y_head, path)
            return z[x_key], None if y_key is None else z[y_key]
    except FileNotFoundError:
        raise DataError("file not found", source=path) from None
    except ValueError as e:
        if "pickled" in str(e):  # numpy's word for any file that is neither .npz nor .npy
            raise DataError("not a valid .npz file: no zip archive inside", source=path) from None
        raise DataError(f"not a valid .npz file: {e}", source=path) from None
    except DataError:
        raise
    except Exception as e:  # zip, zlib and header failures alike: the file is not a usable .npz
        raise DataError(f"not a valid .npz file ({type(e).__name__}: {e})", source=path) from None


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


def read_csv(path, label, header="auto", delimiter=","):
    """Features, label column(s) and each example's line number from a CSV; the header is
    detected when ``auto``."""
    try:
        with open(path, newline="", encoding=CSV_ENCODING) as f:
            try:
                rows = list(csv.reader(f, delimiter=delimiter))
            except UnicodeDecodeError:  # its position is one inside the decoder's read buffer
                f.buffer.seek(0)
                decode_csv(f.buffer.read(), path)  # raises, naming the line
                raise
    except FileNotFoundError:
        raise DataError("file not found", source=path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read: {e}", source=path) from None
    rows = [(n, r) for n, r in enumerate(rows, 1) if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError("no rows", source=path)
    if header == "auto":
        header = not all(is_float(c) for c in rows[0][1])
    names = [c.strip() for c in rows[0][1]] if header else []
    body = rows[1:] if header else rows
    width = len(rows[0][1])
    labels = label if isinstance(label, list) else [label]
    columns = [_column(c, names, width, path, rows[0][0]) for c in labels]
    values = np.empty((len(body), width), np.float64)
    for i, (line, row) in enumerate(body):
        if len(row) != width:
            raise DataError(f"has {len(row)} cells, expected {width}", source=path, where=f"line {line}")
        try:
            values[i] = [float(c) for c in row]
        except ValueError:
            bad = next(c for c in row if not is_float(c))
            raise DataError(f"cell {bad!r} is not a number", source=path, where=f"line {line}") from None
    features = [j for j in range(width) if j not in columns]
    with np.errstate(over="ignore"):  # overflow to inf is reported below, by line
        x = values[:, features].astype(np.float32)
    _check_finite(values, x, features, body, path)
    y = values[:, columns]
    lines = np.array([line for line, _ in body], np.int64)
    return x, (y[:, 0] if not isinstance(label, list) else y), lines


def decode_csv(raw, path):
    """The text of a CSV file's bytes, or a DataError naming the line of a byte that is not
    UTF-8."""
    try:
        return raw.decode(CSV_ENCODING)
    except UnicodeDecodeError as e:  # e.object: the bytes after any byte-order mark
        line = e.object.count(b"\n", 0, e.start) + 1
        raise DataError(f"byte {e.object[e.start]:#04x} is not UTF-8 text", source=path,
                        where=f"line {line}") from None


def _check_finite(values, x, features, body, path):
    """Refuse nan and inf cells, and features beyond float32, naming the file's line."""
    bad_x = ~np.isfinite(x)
    bad = ~np.isfinite(values).all(axis=1) | bad_x.any(axis=1)
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    line, row = body[i]
    if not np.isfinite(values[i]).all():
        j = int(np.flatnonzero(~np.isfinite(values[i]))[0])
        raise DataError(f"cell {row[j]!r} is not a finite number", source=path,
                        where=f"line {line}")
    j = features[int(np.flatnonzero(bad_x[i])[0])]
    raise DataError(f"cell {row[j]!r} is beyond the float32 range", source=path,
                    where=f"line {line}")


def is_float(text):
    """Whether a CSV cell reads as a number: a first row with any other cell is a header."""
    try:
        float(text)
        return True
    except ValueError:
        return False


def _column(label, names, width, path, header_line):
    if isinstance(label, str):
        if label not in names:
            raise DataError(f"no column named {label!r}; columns: {', '.join(names) or '(no header)'}",
                            source=path)
        found = [j for j, name in enumerate(names) if name == label]
        if len(found) > 1:  # taking the first would make the others input features unnoticed
            raise DataError(f"{len(found)} columns are named {label!r} (columns "
                            f"{', '.join(str(j + 1) for j in found)}); a label must name one "
                            f"column", source=path, where=f"line {header_line}")
        return found[0]
    if not -width <= label < width:
        raise DataError(f"label column {label} does not exist; rows have {width} cells", source=path)
    return label % width


def read_dataset(spec, labels=True):
    """(x, y, source, lines) for a validated dataset spec; x keeps its stored dtype (see
    ``_native``), flattened to 2-D; ``lines`` are the examples' line numbers in a CSV, else
    None. Without ``labels`` (predict), y is None and its file or array is not read; a CSV's
    label columns are still read, to be left out of the inputs."""
    fmt, lines = spec["format"], None
    if fmt == "idx":
        x, y = read_idx(spec["images"]), read_idx(spec["labels"]) if labels else None
        source = f"{spec['images']} with {Path(spec['labels']).name}"
    elif fmt == "npz":
        x, y = read_npz(spec["path"], spec["x"], spec["y"] if labels else None)
        source = spec["path"]
    else:
        x, y, lines = read_csv(spec["path"], spec["label"], spec["header"], spec["delimiter"])
        y = y if labels else None
        source = spec["path"]
    _check_examples(x, y, source)
    x, y = _native(x), None if y is None else _native(y)
    x = np.ascontiguousarray(x.reshape(len(x), -1))
    if x.dtype.kind == "f" and not np.isfinite(x).all():  # a CSV's cells were checked by line
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise DataError("input has a NaN or infinite value", source=source,
                        where=f"example {row + 1}")
    return x, y, source, lines


def _check_examples(x, y, source):
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


def _native(a):
    """``a`` in a dtype the kernels take: native byte order, float16 widened to float32 and
    long double narrowed to float64 (numba has neither). Other arrays are returned as they are."""
    if a.dtype.kind == "f" and a.dtype.itemsize not in (4, 8):
        return a.astype(np.float32 if a.dtype.itemsize < 4 else np.float64)
    if not a.dtype.isnative:
        return a.astype(a.dtype.newbyteorder("="))
    return a


class Dataset:
    """Inputs in their stored dtype, targets as the loss takes them, and the input transform.

    ``batch(rows, out)`` writes (x[rows] - mean) * scale into ``out`` (float32 or float64).
    """

    def __init__(self, x, y, mean, scale, source=None):
        # read-only, as arrays read from bytes are: the gather kernel then has one signature
        self.x, self.y, self.source = x.view(), y, source
        self.x.flags.writeable = False
        self.mean = np.broadcast_to(np.asarray(mean, np.float64), (x.shape[1],)).copy()
        self.scale = scale
        self._typed = {}
        self._check_float32_range()

    def _check_float32_range(self):
        """Training batches are float32: an input beyond its range would become inf unnoticed.
        Integer dtypes are checked by their bounds; only wider inputs cost a pass."""
        x, limit = self.x, float(np.finfo(np.float32).max)
        if not (abs(self.scale) <= limit and np.all(np.abs(self.mean) <= limit)):
            # in a float32 batch it would be inf, and an input equal to the mean would be NaN
            raise DataError("data.scale and data.mean must lie within the float32 range of "
                            "training (3.4e38)", source=self.source)
        if x.size == 0:
            return
        info = np.iinfo(x.dtype) if x.dtype.kind in "ui" else np.finfo(x.dtype)
        worst = np.abs((np.array([info.min, info.max], np.float64)[:, None] - self.mean)
                       * self.scale).max()
        if worst <= limit:
            return
        with np.errstate(over="ignore", invalid="ignore"):
            worst = np.abs((np.array([x.min(axis=0), x.max(axis=0)], np.float64) - self.mean)
                           * self.scale).max()
        if not worst <= limit:
            raise DataError(f"inputs reach {worst:.3g} after (x - data.mean) * data.scale, beyond "
                            f"the float32 range of training (3.4e38); scale them down with "
                            f"data.scale", source=self.source)

    def __len__(self):
        return len(self.x)

    @property
    def n_features(self):
        return self.x.shape[1]

    def batch(self, rows, out):
        """``out`` = the scaled inputs of ``rows``: (batch,) int64, each in 0..len - 1. The
        kernel reads them unchecked, for the training loop; ``inputs`` checks them."""
        mean = self._typed.get(out.dtype)
        if mean is None:
            mean = self._typed[out.dtype] = self.mean.astype(out.dtype)
        kernels.jit.gather_scale(self.x, rows, mean, out.dtype.type(self.scale), out)
        return out

    def chunks(self, dtype=np.float32, size=1024):
        """(rows, scaled inputs) over the whole dataset in order, ``size`` rows at a time, in
        one reused buffer: evaluation never holds the dataset as floats (188 MB for MNIST's
        training set)."""
        buffer = np.empty((min(size, len(self)), self.n_features), dtype)
        for start in range(0, len(self), size):
            rows = np.arange(start, min(start + size, len(self)), dtype=np.int64)
            yield rows, self.batch(rows, buffer[:len(rows)])

    def inputs(self, dtype=np.float32, rows=None):
        """Scaled inputs for ``rows`` (all by default), as a fresh array. ``rows`` index as
        in numpy (negative from the end, a boolean mask), checked by numpy: the gather is not."""
        rows = np.arange(len(self), dtype=np.int64)[slice(None) if rows is None else rows]
        if rows.ndim != 1:
            raise IndexError(f"rows must be one-dimensional, found {rows.ndim} dimensions")
        return self.batch(rows, np.empty((len(rows), self.n_features), dtype))

    def examples(self, rows, dtype=np.float64):
        """(inputs, targets) of ``rows`` for a check in ``dtype``; class labels stay int64."""
        t = self.y[rows]
        return self.inputs(dtype, rows), t if t.dtype == np.int64 else t.astype(dtype)

    def subset(self, rows):
        return Dataset(self.x[rows], self.y[rows], self.mean, self.scale, self.source)
