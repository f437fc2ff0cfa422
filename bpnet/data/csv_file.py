"""CSV files: one example per row, label column(s) by name or index, the header detected;
every error names the line."""

import csv

import numpy as np

from ..errors import DataError
from ..files import refuse_special

# UTF-8, without the byte-order mark that Excel's "CSV UTF-8" puts before the first name
CSV_ENCODING = "utf-8-sig"


def read_csv(path, label, header="auto", delimiter=",", labels=True):
    """Features, label column(s) (None without ``labels``: their cells are not even parsed)
    and each example's line number from a CSV; the header is detected when ``auto``."""
    try:
        refuse_special(path, DataError)
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
    wanted = label if isinstance(label, list) else [label]
    if not labels:  # predict: a named label column may be gone, it would not be read anyway
        wanted = [c for c in wanted if not isinstance(c, str) or c in names]
    columns = [_column(c, names, width, path, rows[0][0]) for c in wanted]
    features = [j for j in range(width) if j not in columns]
    used = features + (columns if labels else [])  # the columns parsed, features first
    values = np.empty((len(body), len(used)), np.float64)
    for i, (line, row) in enumerate(body):
        if len(row) != width:
            raise DataError(f"has {len(row)} cells, expected {width}", source=path, where=f"line {line}")
        cells = [row[j] for j in used]
        try:
            values[i] = [float(c) for c in cells]
        except ValueError:
            bad = next(c for c in cells if not is_float(c))
            raise DataError(f"cell {bad!r} is not a number", source=path, where=f"line {line}") from None
    with np.errstate(over="ignore"):  # overflow to inf is reported below, by line
        x = values[:, :len(features)].astype(np.float32)
    _check_finite(values, x, used, body, path)
    lines = np.array([line for line, _ in body], np.int64)
    if not labels:
        return x, None, lines
    y = values[:, len(features):]
    return x, (y[:, 0] if not isinstance(label, list) else y), lines


def header_of(path, header="auto", delimiter=","):
    """(cells per row, header names or [], its line) from a CSV's first row that is not
    blank; (None, [], None) when it cannot be read, which read_csv then reports in full."""
    try:
        refuse_special(path, DataError)  # a FIFO would block the open for ever
        with open(path, newline="", encoding=CSV_ENCODING) as f:
            reader = csv.reader(f, delimiter=delimiter)
            for cells in reader:
                if any(c.strip() for c in cells):
                    if header == "auto":
                        header = not all(is_float(c) for c in cells)
                    names = [c.strip() for c in cells] if header else []
                    return len(cells), names, reader.line_num
    except (DataError, OSError, UnicodeDecodeError, csv.Error, TypeError):
        pass
    return None, [], None


def check_same_features(spec, train):
    """Refuse the CSV of dataset ``spec`` when its header names other feature columns, or the
    same in another order, than the training CSV's (``train``, a spec too): the network would
    take x2 for x1 without a word. Nothing to compare without both headers."""
    _, names, line = header_of(spec["path"], spec["header"], spec["delimiter"])
    trained = header_of(train["path"], train["header"], train["delimiter"])[1]
    now, then = _features(names, spec["label"]), _features(trained, train["label"])
    if names and trained and now != then:
        raise DataError(f"feature columns {', '.join(now)} differ from the training data's "
                        f"{', '.join(then)} in {train['path']} (names and order must match)",
                        source=spec["path"], where=f"line {line}")


def _features(names, label):
    """The header's names but the label columns' (by name or index)."""
    wanted = label if isinstance(label, list) else [label]
    drop = {c if isinstance(c, str) else names[c] for c in wanted
            if isinstance(c, str) or -len(names) <= c < len(names)}
    return [c for c in names if c not in drop]


def decode_csv(raw, path):
    """The text of a CSV file's bytes, or a DataError naming the line of a byte that is not
    UTF-8."""
    try:
        return raw.decode(CSV_ENCODING)
    except UnicodeDecodeError as e:  # e.object: the bytes after any byte-order mark
        line = e.object.count(b"\n", 0, e.start) + 1
        raise DataError(f"byte {e.object[e.start]:#04x} is not UTF-8 text", source=path,
                        where=f"line {line}") from None


def _check_finite(values, x, used, body, path):
    """Refuse nan and inf cells, and features beyond float32, naming the file's line.
    ``values`` holds the row's columns ``used``, the features (``x``) first."""
    bad_x = ~np.isfinite(x)
    bad = ~np.isfinite(values).all(axis=1) | bad_x.any(axis=1)
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    line, row = body[i]
    if not np.isfinite(values[i]).all():
        j = used[int(np.flatnonzero(~np.isfinite(values[i]))[0])]
        raise DataError(f"cell {row[j]!r} is not a finite number", source=path,
                        where=f"line {line}")
    j = used[int(np.flatnonzero(bad_x[i])[0])]
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
