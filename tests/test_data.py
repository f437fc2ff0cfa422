"""Readers on valid and broken files (IDX plain and .gz, NPZ, CSV), and the Dataset."""

import gzip
import re
import struct

import numpy as np
import pytest

from bpnet.config import resolve
from bpnet.data import Dataset, read_csv, read_dataset, read_idx, read_npz
from bpnet.data.idx import _Gunzip
from bpnet.errors import DataError
from bpnet.losses import LOSSES
from bpnet.session import open_session

from conftest import MNIST


def idx_bytes(array, code=0x08):
    """An IDX file's bytes: 00 00, type code, number of dimensions, big-endian sizes, data."""
    big = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + np.ascontiguousarray(array, big).tobytes()


def write(path, data):
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def idx_error(path):
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert message.startswith(str(path)), "the message names the file"
    return message


# ----- IDX ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16),
                                        (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)])
def test_idx_round_trip(tmp_path, rng, code, dtype, suffix):
    if np.dtype(dtype).kind == "f":
        array = rng.standard_normal((3, 4, 5)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, (3, 4, 5), endpoint=True).astype(dtype)
    got = read_idx(write(tmp_path / f"a.idx{suffix}", idx_bytes(array, code)))
    assert got.dtype == dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


def test_idx_one_dimensional_labels(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "l.idx", idx_bytes(labels))), labels)


def test_idx_reads_the_shipped_mnist_labels():
    labels = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(10))


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_truncated_data(tmp_path, suffix):
    data = idx_bytes(np.zeros((10, 8, 8), np.uint8))
    # the numbers add up: 16 header bytes and 640 data bytes are 656, one more than the file's
    expected = ("truncated: the header promises 640 data bytes, the file holds 639 after the header"
                if suffix else "it promises 16 header bytes and 640 data bytes, the file has 655 bytes")
    assert idx_error(write(tmp_path / f"t.idx{suffix}", data[:-1])).endswith(expected)
    # far too short: plain files fail on their size, .gz files on their stored length
    message = idx_error(write(tmp_path / f"u.idx{suffix}", data[:200]))
    assert "truncated" in message or "does not hold" in message


def test_idx_gzip_cut_short(tmp_path):
    packed = gzip.compress(idx_bytes(np.arange(5000, dtype=np.uint8).reshape(50, 100) % 7))
    path = tmp_path / "cut.idx.gz"
    path.write_bytes(packed[: len(packed) // 2])
    idx_error(path)


@pytest.mark.parametrize("members,padding", [(1, 0), (3, 0), (2, 512), (3, 7)])
def test_gunzip_reads_what_gzip_reads(tmp_path, members, padding, monkeypatch):
    monkeypatch.setattr(_Gunzip, "FEED", 4096)  # many feeds per member, and members across feeds
    rng = np.random.default_rng(members)
    pieces = [rng.integers(0, 4, 50_000 + k, dtype=np.uint8).tobytes() for k in range(members)]
    path = tmp_path / "m.gz"
    path.write_bytes(b"".join(gzip.compress(p) + b"\0" * padding for p in pieces))
    with _Gunzip(path) as f:
        got = [f.read(n) for n in (1, 7, 40_000, 10**6, 5)]
    assert b"".join(got) == gzip.decompress(path.read_bytes()) == b"".join(pieces)
    assert [len(g) for g in got[:3]] == [1, 7, 40_000] and got[-1] == b""


def test_idx_gzip_in_members(tmp_path):
    images = np.arange(3000, dtype=np.uint8).reshape(30, 100) % 11
    data = idx_bytes(images)
    path = tmp_path / "m.idx.gz"
    path.write_bytes(gzip.compress(data[:1000]) + b"\0" * 8 + gzip.compress(data[1000:]))
    np.testing.assert_array_equal(read_idx(path), images)


def test_idx_gzip_empty(tmp_path):
    path = tmp_path / "e.idx.gz"
    path.write_bytes(b"")
    assert "not an IDX file" in idx_error(path)


def test_gunzip_truncated_member(tmp_path):
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(b"x" * 1000) + gzip.compress(b"y" * 1000)[:-12])
    with pytest.raises(EOFError), _Gunzip(path) as f:
        f.read(5000)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_extra_bytes(tmp_path, suffix):
    data = idx_bytes(np.zeros((4, 4), np.uint8)) + b"\x01"
    message = idx_error(write(tmp_path / f"x.idx{suffix}", data))
    assert "more than" in message or "does not hold" in message


@pytest.mark.parametrize("head", [b"", b"\x00", b"\x00\x01\x08\x01", b"\x00\x00\x07\x01",
                                  b"\x00\x00\x08\x00", b"\x00\x00\x08\x05", b"PK\x03\x04"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_wrong_magic(tmp_path, head, suffix):
    message = idx_error(write(tmp_path / f"m.idx{suffix}", head + b"\x00" * 40))
    assert "not an IDX file" in message and "expected 00 00" in message


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_oversized_header_is_refused_before_allocating(tmp_path, suffix):
    """A header promising 4 TB must fail at once, not try to read or allocate it."""
    head = bytes([0, 0, 0x0D, 3]) + struct.pack(">3I", 100000, 100000, 100000)
    message = idx_error(write(tmp_path / f"big.idx{suffix}", head + b"\x00" * 64))
    assert "4000000000000000" in message


def test_idx_header_cut_inside_the_sizes(tmp_path):
    path = write(tmp_path / "h.idx", bytes([0, 0, 8, 3]) + struct.pack(">2I", 2, 2))
    assert "truncated in the header" in idx_error(path)


def test_idx_plain_file_named_gz_and_missing_file(tmp_path):
    path = tmp_path / "plain.idx.gz"
    path.write_bytes(idx_bytes(np.zeros((2, 2), np.uint8)))
    idx_error(path)
    assert "file not found" in idx_error(tmp_path / "nothing.idx")


# ----- NPZ ----------------------------------------------------------------------------------------

def test_npz_valid(tmp_path, rng):
    x, y = rng.standard_normal((6, 3)).astype(np.float32), np.arange(6)
    np.savez(tmp_path / "d.npz", inputs=x, labels=y)
    gx, gy = read_npz(tmp_path / "d.npz", "inputs", "labels")
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)


def test_npz_missing_key_lists_the_keys(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 2)), targets=np.zeros(2))
    with pytest.raises(DataError, match=r"d\.npz: no array named 'x'; the file has images, targets"):
        read_npz(tmp_path / "d.npz", "x", "targets")


def test_npz_object_array_is_refused(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([np.zeros(2), "a"], dtype=object), y=np.zeros(2))
    with pytest.raises(DataError, match="object array"):
        read_npz(tmp_path / "o.npz", "x", "y")


def test_npz_broken_and_missing_files(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match=r"bad\.npz: not an \.npz archive: no zip archive inside"):
        read_npz(tmp_path / "bad.npz", "x", "y")
    with pytest.raises(DataError, match="file not found"):
        read_npz(tmp_path / "none.npz", "x", "y")


def test_npz_shapes_are_checked_from_the_headers_before_any_data_is_read(tmp_path):
    """32 MB of zeros compress to 32 KB; inflating them to find 10 labels took all of it."""
    import tracemalloc
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((1_000_000, 8), np.float32), y=np.zeros(10, np.int64))
    tracemalloc.start()
    with pytest.raises(DataError, match=r"bomb\.npz: 1000000 inputs but 10 labels$"):
        read_npz(path, "x", "y")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000


def test_npz_header_promising_more_than_the_archive_holds(tmp_path):
    """A header claiming 1.6 TB was refused only when allocating it failed."""
    import io
    import zipfile
    x, y = io.BytesIO(), io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(np.zeros((5, 4), np.float32))
    np.lib.format.write_array_header_1_0(x, {**header, "shape": (10**11, 4)})
    np.save(y, np.zeros(5))
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
        z.writestr("x.npy", x.getvalue() + b"\0" * 80)
        z.writestr("y.npy", y.getvalue())
    with pytest.raises(DataError, match=r"big\.npz: array 'x': truncated or bad header: it "
                                        r"promises 128 header bytes and 1600000000000 data bytes"):
        read_npz(tmp_path / "big.npz", "x", "y")


def test_npz_member_that_is_not_npy_is_named(tmp_path):
    import zipfile
    with zipfile.ZipFile(tmp_path / "g.npz", "w") as z:
        z.writestr("x.npy", b"not an array")
        z.writestr("y.npy", b"nor this")
    with pytest.raises(DataError, match=r"g\.npz: array 'x' is not a valid \.npy array: "):
        read_npz(tmp_path / "g.npz", "x", "y")


def test_npy_file_named_npz_is_not_an_archive(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 2)))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    with pytest.raises(DataError) as info:
        read_npz(tmp_path / "a.npz", "x", "y")
    assert str(info.value).startswith(f"{tmp_path / 'a.npz'}: not an .npz archive")
    assert "TypeError" not in str(info.value)


# ----- CSV ----------------------------------------------------------------------------------------

def write_csv(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_header_detected_and_label_by_name(tmp_path):
    path = write_csv(tmp_path, "a,b,label,c\n1,2,0,3\n4,5,1,6\n")
    x, y, _ = read_csv(path, "label")
    np.testing.assert_array_equal(x, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(y, [0, 1])
    assert x.dtype == np.float32


@pytest.mark.parametrize("label,features,labels", [
    (0, [[2, 3], [5, 6]], [1, 4]),
    (-1, [[1, 2], [4, 5]], [3, 6]),
    (1, [[1, 3], [4, 6]], [2, 5]),
])
def test_csv_without_header_label_by_index(tmp_path, label, features, labels):
    path = write_csv(tmp_path, "1,2,3\n4,5,6\n")
    x, y, _ = read_csv(path, label)
    np.testing.assert_array_equal(x, features)
    np.testing.assert_array_equal(y, labels)


def test_csv_header_with_label_by_index_and_forced_header(tmp_path):
    x, y, _ = read_csv(write_csv(tmp_path, "f1,f2,y\n1,2,3\n"), -1)
    np.testing.assert_array_equal(x, [[1, 2]])
    np.testing.assert_array_equal(y, [3])
    # a numeric first row is data under auto, a header when told so
    path = write_csv(tmp_path, "7,8,9\n1,2,3\n", "n.csv")
    assert len(read_csv(path, 0)[0]) == 2
    assert len(read_csv(path, 0, header=True)[0]) == 1


def test_csv_several_label_columns(tmp_path):
    x, y, _ = read_csv(write_csv(tmp_path, "a,t1,b,t2\n1,0,2,1\n3,1,4,0\n"), ["t1", "t2"])
    np.testing.assert_array_equal(x, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [[0, 1], [1, 0]])


def test_csv_with_a_byte_order_mark(tmp_path):
    """Excel's "CSV UTF-8" starts the file with one: it is not part of the first name."""
    (tmp_path / "bom.csv").write_bytes("\ufefflabel,b,c\n0,2,3\n1,5,6\n".encode())
    x, y, _ = read_csv(tmp_path / "bom.csv", "label")
    np.testing.assert_array_equal(x, [[2, 3], [5, 6]])
    np.testing.assert_array_equal(y, [0, 1])
    (tmp_path / "n.csv").write_bytes("\ufeff7,8,9\n1,2,3\n".encode())
    assert len(read_csv(tmp_path / "n.csv", 0)[0]) == 2  # numbers first: no header


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_csv_byte_that_is_not_utf8_names_the_line(tmp_path, bom):
    """Far into the file: the decoder's own position is one inside its read buffer."""
    rows = b"".join(b"%d,%d\n" % (i, i % 2) for i in range(20_000))
    (tmp_path / "d.csv").write_bytes(bom + b"a,y\n" + rows + b"1,\xff\n" + rows)
    with pytest.raises(DataError, match=r"d\.csv: line 20002: byte 0xff is not UTF-8 text$"):
        read_csv(tmp_path / "d.csv", "y")


def test_csv_other_delimiter_and_blank_lines(tmp_path):
    x, y, _ = read_csv(write_csv(tmp_path, "a;y\n\n1.5;0\n\n2.5;1\n"), "y", delimiter=";")
    np.testing.assert_array_equal(x, [[1.5], [2.5]])
    np.testing.assert_array_equal(y, [0, 1])


def test_csv_ragged_row_names_the_line(tmp_path):
    path = write_csv(tmp_path, "a,b,y\n1,2,0\n\n3,4\n")
    with pytest.raises(DataError, match=r"d\.csv: line 4: has 2 cells, expected 3"):
        read_csv(path, "y")


def test_csv_non_numeric_cell_names_the_line_and_cell(tmp_path):
    path = write_csv(tmp_path, "1,2,0\n3,four,1\n")
    with pytest.raises(DataError, match=r"d\.csv: line 2: cell 'four' is not a number"):
        read_csv(path, -1)


@pytest.mark.parametrize("cell,text", [("nan", "cell 'nan' is not a finite number"),
                                       ("-inf", "cell '-inf' is not a finite number"),
                                       ("1e39", "cell '1e39' is beyond the float32 range")])
@pytest.mark.parametrize("column", [1, 2])
def test_csv_non_finite_cell_names_the_line(tmp_path, cell, text, column):
    """Line numbers count the header and blank lines, as the other CSV errors do."""
    rows = [["1", "2", "0"], ["3", "4", "1"], ["5", "6", "0"]]
    rows[2][column] = cell
    path = write_csv(tmp_path, "a,b,y\n" + "\n".join(",".join(r) for r in rows[:2]) + "\n\n"
                     + ",".join(rows[2]) + "\n")
    if column == 2 and cell == "1e39":
        read_csv(path, "y")  # a label keeps float64; the loss judges it
        return
    with pytest.raises(DataError, match=rf"d\.csv: line 5: {text}$"):
        read_csv(path, "y")


def test_csv_unknown_label_column(tmp_path):
    path = write_csv(tmp_path, "a,b,y\n1,2,0\n")
    with pytest.raises(DataError, match="no column named 'label'; columns: a, b, y"):
        read_csv(path, "label")
    with pytest.raises(DataError, match="label column 3 does not exist; rows have 3 cells"):
        read_csv(path, 3)


def test_csv_label_named_by_two_columns_is_refused(tmp_path):
    """The second 'label' was silently read as an input feature."""
    path = write_csv(tmp_path, "\na,b,label,label\n1,2,0,1\n")
    with pytest.raises(DataError, match=r"d\.csv: line 2: 2 columns are named 'label' "
                                        r"\(columns 3, 4\); a label must name one column$"):
        read_csv(path, "label")
    with pytest.raises(DataError, match="columns are named 'label'"):
        read_csv(path, ["a", "label"])
    x, _, _ = read_csv(write_csv(tmp_path, "a,a,label\n1,2,0\n", "f.csv"), "label")
    np.testing.assert_array_equal(x, [[1, 2]])  # a name no label uses may repeat


def test_csv_empty_and_missing(tmp_path):
    with pytest.raises(DataError, match="no rows"):
        read_csv(write_csv(tmp_path, "\n\n"), 0)
    with pytest.raises(DataError, match="file not found"):
        read_csv(tmp_path / "none.csv", 0)


# ----- datasets -----------------------------------------------------------------------------------

def test_read_dataset_flattens_and_keeps_the_stored_dtype(tmp_path, rng):
    x = rng.integers(0, 256, (5, 3, 2)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5))
    gx, gy, source, lines = read_dataset({"format": "npz", "path": str(tmp_path / "d.npz"),
                                   "x": "x", "y": "y"})
    assert gx.shape == (5, 6) and gx.dtype == np.uint8 and source.endswith("d.npz")
    assert lines is None  # only a CSV has lines
    np.testing.assert_array_equal(gx, x.reshape(5, 6))


@pytest.mark.parametrize("x,y,text", [
    (np.zeros((3, 2)), np.zeros(2), "3 inputs but 2 labels"),
    (np.zeros((0, 2)), np.zeros(0), "empty"),
    (np.array([[0, 1], [np.nan, 2]]), np.zeros(2), "example 2: input has a NaN"),
    (np.array([["a", "b"]]), np.zeros(1), "expected numbers"),
    (np.zeros((4, 0)), np.zeros(4), "no features"),
    (np.float64(3.0), np.zeros(4), "one example per row"),
    (np.zeros((4, 2)), np.int64(1), "one example per row"),
])
def test_read_dataset_refuses_bad_arrays(tmp_path, x, y, text):
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=text):
        read_dataset({"format": "npz", "path": str(tmp_path / "d.npz"), "x": "x", "y": "y"})


def test_read_dataset_without_labels_leaves_them_unread(tmp_path, rng):
    x = rng.integers(0, 256, (5, 3, 2)).astype(np.uint8)
    write(tmp_path / "x.idx", idx_bytes(x))
    spec = {"format": "idx", "images": str(tmp_path / "x.idx"), "labels": str(tmp_path / "none")}
    gx, gy, _, _ = read_dataset(spec, labels=False)
    assert gy is None and gx.shape == (5, 6)
    np.savez(tmp_path / "d.npz", x=x, y=np.array(["a", "b"]))
    gx, gy, _, _ = read_dataset({"format": "npz", "path": str(tmp_path / "d.npz"), "x": "x",
                              "y": "y"}, labels=False)
    assert gy is None and gx.shape == (5, 6)


@pytest.mark.parametrize("stored,native", [(">f4", np.float32), (">f8", np.float64),
                                           ("<f2", np.float32), (">f2", np.float32),
                                           (">i4", np.int32), (">u2", np.uint16),
                                           (">i8", np.int64), (np.longdouble, np.float64)])
def test_read_dataset_gives_the_kernels_native_dtypes(tmp_path, rng, stored, native):
    """numba takes neither float16 nor a non-native byte order; the readers convert."""
    x = rng.integers(0, 100, (6, 3)).astype(stored)
    y = (np.arange(6) % 2).astype(">i8")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    gx, gy, _, _ = read_dataset({"format": "npz", "path": str(tmp_path / "d.npz"), "x": "x", "y": "y"})
    assert gx.dtype == native and gx.dtype.isnative and gy.dtype.isnative
    np.testing.assert_array_equal(gx, x.astype(np.float64))
    np.testing.assert_array_equal(gy, y)
    data = Dataset(gx, gy.astype(np.int64), 1.0, 0.5)
    np.testing.assert_allclose(data.inputs(np.float64), (x.astype(np.float64) - 1.0) * 0.5)


def test_dataset_batch_scales_per_batch_and_keeps_raw_inputs(rng):
    x = rng.integers(0, 256, (10, 4)).astype(np.uint8)
    mean = np.array([1.0, 2.0, 3.0, 4.0])
    data = Dataset(x, np.arange(10), mean, 0.5)
    rows = np.array([7, 2, 2], np.int64)
    for dtype in (np.float32, np.float64):
        out = data.batch(rows, np.empty((3, 4), dtype))
        assert out.dtype == dtype
        np.testing.assert_allclose(out, (x[rows] - mean) * 0.5)
    assert data.x.dtype == np.uint8
    np.testing.assert_allclose(data.inputs(np.float64), (x - mean) * 0.5)


def test_inputs_refuses_rows_outside_the_dataset(rng):
    """The gather kernel reads rows unchecked (the trainer's are a permutation); ``inputs``
    checks them as numpy indexing does, negative rows counting from the end."""
    x = rng.integers(0, 256, (10, 6)).astype(np.uint8)
    data = Dataset(x, np.zeros(10), 0.0, 1.0, "f")
    for rows in ([12], [3, 10], [-11]):
        with pytest.raises(IndexError, match=f"index {rows[-1]} is out of bounds .* size 10"):
            data.inputs(rows=rows)
    for rows in ([1.5], [[1, 2]]):  # a fraction is no row; nor is a table of them
        with pytest.raises(IndexError):
            data.inputs(rows=rows)
    np.testing.assert_array_equal(data.inputs(rows=[-1, 0, -10, 9]), x[[-1, 0, -10, 9]])
    assert data.inputs(rows=[]).shape == (0, 6)


@pytest.mark.parametrize("loss,n_out,label,cell,text", [
    ("softmax_cross_entropy", 3, "t2", "1.5", "label 1.5 is not a whole class number"),
    ("softmax_cross_entropy", 3, "t2", "7", "label 7 is not a class in 0..2"),
    ("softmax_cross_entropy", 3, "t2", "-1", "label -1 is not a class in 0..2"),
    ("sigmoid_cross_entropy", 2, ["t1", "t2"], "1.25", "target 1.25 is outside [0, 1]"),
    ("mse", 2, ["t1", "t2"], "1e39", "target 1e+39 is not a finite float32 number"),
])
@pytest.mark.filterwarnings("error")  # a warning would be a second line on stderr
def test_target_errors_name_the_csv_line_and_the_value_as_written(tmp_path, loss, n_out, label,
                                                                  cell, text):
    """Line numbers count the header and blank lines, as the reader's own errors do."""
    path = write_csv(tmp_path, f"a,t1,t2\n1,0,1\n\n2,1,{cell}\n")
    x, y, source, lines = read_dataset({"format": "csv", "path": str(path), "label": label,
                                        "header": "auto", "delimiter": ","})
    assert list(lines) == [2, 4]
    with pytest.raises(DataError) as info:
        LOSSES[loss](n_out, np.float32).targets_from(y, source, lines)
    assert str(info.value).startswith(f"{path}: line 4: {text}")
    # arrays have no lines: their examples count from 1
    with pytest.raises(DataError, match=rf"^d\.npz: example 2: {re.escape(text)}"):
        LOSSES[loss](n_out, np.float32).targets_from(y, "d.npz")


def test_val_split_holds_out_the_last_examples(tmp_path, rng):
    x = rng.standard_normal((20, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 2)
    cfg = resolve({"data": {"train": {"format": "npz", "path": "d.npz"}, "val_split": 5},
                   "net": {"layers": [{"name": "fc", "type": "affine", "out": 2}],
                           "loss": "softmax_cross_entropy"}}, base=tmp_path)
    session = open_session(cfg)
    train, val = session.splits["train"], session.splits["val"]
    assert len(train) == 15 and len(val) == 5
    np.testing.assert_array_equal(val.x, x[15:])
    np.testing.assert_array_equal(train.y, np.arange(15) % 2)
    assert train.y.dtype == np.int64


def test_inputs_beyond_float32_after_the_transform_are_a_data_error():
    x = np.ones((10, 3))
    x[4, 1] = 1e39  # a float64 that a float32 batch would hold as inf
    with pytest.raises(DataError, match="f.npz: inputs reach 1e\\+39"):
        Dataset(x, np.zeros(10), 0.0, 1.0, "f.npz")
    Dataset(x, np.zeros(10), 0.0, 1e-2, "f.npz")  # scaled into range: fine
    with pytest.raises(DataError, match="data.scale"):
        Dataset(np.full((2, 2), 255, np.uint8), np.zeros(2), 0.0, 1e37, "g.npz")
    for mean, scale in [(0.0, 1e39), ([0.0, -1e39], 1.0)]:  # 0 * inf would be NaN, not inf
        with pytest.raises(DataError, match="g.npz: data.scale and data.mean must lie within"):
            Dataset(np.zeros((2, 2), np.uint8), np.zeros(2), mean, scale, "g.npz")


def test_chunks_cover_the_dataset_in_order_in_one_buffer(rng):
    x = rng.integers(0, 256, (10, 3)).astype(np.uint8)
    data = Dataset(x, np.zeros(10), 1.0, 0.5)
    chunks = [(rows.copy(), part.copy(), part.base) for rows, part in data.chunks(np.float64, 4)]
    assert [len(rows) for rows, _, _ in chunks] == [4, 4, 2]
    assert np.array_equal(np.concatenate([r for r, _, _ in chunks]), np.arange(10))
    np.testing.assert_array_equal(np.concatenate([p for _, p, _ in chunks]), (x - 1.0) * 0.5)
    assert len({id(base) for _, _, base in chunks}) == 1  # one buffer, reused
