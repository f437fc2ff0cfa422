"""Property-based tests: mutated configs and corrupted files either load or give a clean error.

A clean error is a BpnetError (what the CLI prints as one ``Error:`` line); any other exception
escaping a loader is a crash, and fails the test.
"""

import copy
import gzip
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpnet import checkpoint as ckpt
from bpnet.build import build_net
from bpnet.config import load_config, resolve
from bpnet.overrides import apply_override
from bpnet.data import read_csv, read_idx, read_npz
from bpnet.data.idx import _Gunzip
from bpnet.errors import BpnetError

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

BASE = {
    "name": "fuzz", "seed": 1, "threads": 1,
    "net": {"input": 6, "layers": [
        {"name": "fc1", "type": "affine", "out": 5, "init": {"type": "gaussian", "std": 0.1}},
        {"name": "act", "type": "leaky_relu", "slope": 0.1},
        {"name": "drop", "type": "dropout", "rate": 0.5},
        {"name": "fc2", "type": "affine", "out": 3}],
        "loss": "softmax_cross_entropy"},
    "solver": {"type": "adam", "lr": 0.01, "batch_size": 4, "epochs": 2, "lr_policy": "step",
               "stepsize": 1, "newbob": {"start_halving": 0.01}},
    "checkpoint": {"every": 1, "keep": 2},
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner,
                                                                       max_size=3)),
                      max_leaves=6)


def paths(node, prefix=()):
    """Every key path in a nested config, as tuples of keys and list indexes."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


ALL_PATHS = [p for p in paths(BASE) if p]


def mutate(cfg, path, action, value):
    *head, last = path
    node = cfg
    for k in head:
        node = node[k]
    if action == "replace":
        node[last] = value
    elif action == "delete":
        del node[last]
    elif isinstance(node, dict):  # "add": an unknown key beside this one
        node[f"{last}_extra"] = value
    else:
        node.append(value)
    return cfg


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(ALL_PATHS),
                                    st.sampled_from(["replace", "delete", "add"]), values),
                          min_size=1, max_size=3))
def test_mutated_configs_load_or_fail_cleanly(mutations):
    cfg = copy.deepcopy(BASE)
    for path, action, value in mutations:
        try:
            mutate(cfg, path, action, value)
        except (KeyError, IndexError, TypeError, AttributeError):
            continue  # an earlier mutation removed or replaced this path's parent
    try:
        resolved = resolve(cfg, source="fuzz.yaml")
        build_net(resolved, dtype=np.float64, source="fuzz.yaml")
    except BpnetError:
        pass


@FUZZ
@given(text=st.text(max_size=300))
def test_arbitrary_yaml_text_loads_or_fails_cleanly(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except BpnetError:
        pass


@FUZZ
@given(key=st.text(max_size=30), value=st.text(max_size=30))
def test_set_expressions_apply_or_fail_cleanly(key, value):
    cfg = copy.deepcopy(BASE)
    try:
        apply_override(cfg, f"{key}={value}")
        resolve(cfg, source="fuzz.yaml")
    except BpnetError:
        pass


def corrupt(data, edits, cut):
    data = bytearray(data)
    for position, byte in edits:
        if data:
            data[position % len(data)] = byte
    return bytes(data[:cut]) if cut is not None else bytes(data)


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6)
CUTS = st.one_of(st.none(), st.integers(0, 2000))


def idx_bytes():
    images = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    return bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape) + images.tobytes()


@FUZZ
@given(edits=EDITS, cut=CUTS, gz=st.booleans())
def test_corrupted_idx_reads_or_fails_cleanly(tmp_path, edits, cut, gz):
    raw = idx_bytes()
    data = corrupt(gzip.compress(raw) if gz else raw, edits, cut)
    path = tmp_path / ("f.idx.gz" if gz else "f.idx")
    path.write_bytes(data)
    try:
        array = read_idx(path)
    except BpnetError:
        return
    assert array.size * array.itemsize <= len(raw) * 4 + 1024


@FUZZ
@given(members=st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 9)), min_size=1,
                        max_size=4),
       feed=st.integers(1, 64), reads=st.lists(st.integers(0, 200), min_size=1, max_size=8))
def test_gunzip_reads_what_gzip_reads(monkeypatch, members, feed, reads):
    """Members with zero padding after each, fed to inflate in slices of any size, read in
    pieces of any size: the bytes gzip reads, and no short read before the end."""
    monkeypatch.setattr(_Gunzip, "FEED", feed)
    data = b"".join(gzip.compress(m) + b"\0" * pad for m, pad in members)
    expected = gzip.decompress(data)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.gz"
        path.write_bytes(data)
        got = []
        with _Gunzip(path) as f:
            for n in reads:
                got.append(f.read(n))
                assert len(got[-1]) == min(n, len(expected) - sum(map(len, got[:-1])))
            got.append(f.read(10**6))
    assert b"".join(got) == expected


def npz_bytes():
    buffer = io.BytesIO()
    np.savez(buffer, x=np.ones((4, 3), np.float32), y=np.arange(4))
    return buffer.getvalue()


@FUZZ
@given(edits=EDITS, cut=CUTS)
def test_corrupted_npz_reads_or_fails_cleanly(tmp_path, edits, cut):
    path = tmp_path / "f.npz"
    path.write_bytes(corrupt(npz_bytes(), edits, cut))
    try:
        read_npz(path, "x", "y")
    except BpnetError:
        pass


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("0123456789.,-e \nabc\"")), max_size=200),
       label=st.one_of(st.integers(-4, 4), st.sampled_from(["a", "label"])))
def test_arbitrary_csv_reads_or_fails_cleanly(tmp_path, text, label):
    path = tmp_path / "f.csv"
    path.write_text(text)
    try:
        read_csv(path, label)
    except BpnetError:
        pass


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "c.npz"
    ckpt.save(path, {"param/fc1.W": np.ones((2, 3), np.float32)}, {"epoch": 1, "rows": []})
    return path.read_bytes()


@FUZZ
@given(edits=EDITS, cut=CUTS)
def test_corrupted_checkpoint_loads_or_fails_cleanly(tmp_path, checkpoint_bytes, edits, cut):
    path = tmp_path / "c.npz"
    path.write_bytes(corrupt(checkpoint_bytes, edits, cut))
    try:
        arrays, meta = ckpt.load(path)
    except BpnetError:
        return
    assert isinstance(meta, dict)
    json.dumps(meta)
