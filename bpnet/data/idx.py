"""IDX files (MNIST's format), plain or gzipped: a magic number, the dimensions, the data.

The header is checked against the file's size before anything is allocated, and the data is
read in chunks, so a header that lies cannot make bpnet allocate what it promises.
"""

import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import refuse_special

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
    refuse_special(path, DataError)
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
