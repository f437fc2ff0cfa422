"""The data eval and predict are given: a split of the run, or a file read the way the run's
training data was (array names; label columns, header and delimiter)."""

from pathlib import Path

from .config import load_config
from .errors import ConfigError, DataError
from .files import refuse_special

SPLITS = ("train", "val", "test")


def dataset_for(session, data, labels=True):
    """The dataset ``--data`` names: a split, or a data or config file to read.

    A .npz or .csv file is read with the training data's options (array names; label columns,
    header and delimiter) when it has the same format. Without ``labels`` (predict) no labels
    are read or checked: the file may hold features only, and the Dataset has no targets.
    """
    from .data import Dataset, read_dataset
    if data in SPLITS:
        return session.splits.get(data)
    path = Path(data)
    refuse_special(path, DataError)  # before the header peek below: a FIFO would block it
    train = (session.cfg["data"] or {}).get("train") or {}
    if path.suffix in (".yaml", ".yml"):
        other = load_config(path)
        spec = (other["data"] or {}).get("test") or (other["data"] or {}).get("train")
        if spec is None:
            raise ConfigError("has no data.test or data.train to evaluate on", source=path)
        if spec["format"] == "csv" and train.get("format") == "csv":
            from .data.csv_file import check_same_features
            check_same_features(spec, train)
    elif path.suffix == ".npz":
        spec = _npz_spec(path, train)
    elif path.suffix == ".csv":
        spec = _csv_spec(path, train, session.net, labels)
    else:
        raise DataError(f"expected a split of the run ({', '.join(SPLITS)}) or a .npz, .csv or "
                        f"config .yaml file", source=path)
    x, y, source, lines = read_dataset(spec, labels)
    n_in = session.net.n_in
    if x.shape[1] != n_in:
        raise DataError(f"examples have {x.shape[1]} features, the network takes {n_in}",
                        source=source)
    y = session.net.loss.targets_from(y, source, lines) if labels else None
    d = session.cfg["data"] or {"mean": 0.0, "scale": 1.0}
    return Dataset(x, y, d["mean"], d["scale"], source)


def input_files(session, data):
    """The files ``--data`` is read from: those of the run's split, or the file given."""
    if data not in SPLITS:
        return [Path(data)]
    splits = session.cfg["data"] or {}
    spec = splits.get(data) or (splits.get("train") if data == "val" else None) or {}
    return [Path(spec[k]) for k in ("path", "images", "labels") if spec.get(k)]


def _npz_spec(path, train):
    from .config import dataset_spec

    keys = {k: train[k] for k in ("x", "y")} if train.get("format") == "npz" else {}
    return dataset_spec({"format": "npz", "path": str(path), **keys}, "--data", path, ".")


def _csv_spec(path, train, net, labels):
    """How to read a CSV ``--data`` file: which columns are labels, and whether there are any.

    A model trained on CSV finds its label columns where the training data had them. For any
    other model, eval reads the columns after the network's n_in features as labels, and
    predict takes no column as a label: it cannot check a guess, so the width must be n_in.
    """
    from .config import dataset_spec
    from .data.csv_file import check_same_features, header_of

    same = train.get("format") == "csv"
    header = train["header"] if same else "auto"
    delimiter = train["delimiter"] if same else ","
    width, names, _ = header_of(path, header, delimiter)
    n_in = net.n_in
    if same:
        label = train["label"]
        wanted = label if isinstance(label, list) else [label]
        present = all(c in names if isinstance(c, str) else width == n_in + len(wanted)
                      for c in wanted)
        if not labels and not present:
            if width != n_in and width is not None:
                raise DataError(f"rows have {width} cells, expected the network's {n_in} "
                                f"features, or those and the label column(s) "
                                f"{', '.join(map(repr, wanted))} as in the training data",
                                source=path)
            label = None
    else:
        k = 1 if net.loss.target_kind == "class" else net.n_out
        if labels:
            if width is not None and width != n_in + k:
                raise DataError(f"rows have {width} cells, expected {n_in + k}: the network's "
                                f"{n_in} features, then {k} label column(s)", source=path)
            label = -1 if k == 1 else list(range(n_in, n_in + k))
        else:
            if width is not None and width != n_in:
                raise DataError(f"rows have {width} cells, the network takes {n_in} features; "
                                f"the model was not trained on CSV, so no column is taken as a "
                                f"label: give features only, or a config naming the data",
                                source=path)
            label = None
    spec = dataset_spec({"format": "csv", "path": str(path), "label": label or 0, "header": header,
                         "delimiter": delimiter}, "--data", path, ".")
    if label is None:
        spec["label"] = []  # read_csv then takes every column as a feature (a config never may)
    if same:
        check_same_features(spec, train)
    return spec
