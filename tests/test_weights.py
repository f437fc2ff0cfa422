"""A new run started from trained weights (train --weights): parameters copied by name and
exactly, the others left to their initialisers, only the weights taken, the source recorded,
and every mistake one line."""

import hashlib
import json
import shutil

import numpy as np
import pytest

import bpnet.trainer as train_module
from bpnet import api
from bpnet import checkpoint as ckpt
from bpnet.build import build_net
from bpnet.config import load_config
from bpnet.errors import CheckpointError, ConfigError
from bpnet.weights import copy_weights

import tiny_runs
from tiny_runs import assert_clean_error, bpnet


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished 2-epoch run of the tiny problem (fc1 (16, 10), fc2 (3, 16)), and its config."""
    folder = tmp_path_factory.mktemp("source")
    config = tiny_runs.write_tiny(folder, **{"solver.epochs": 2})
    api.train(config, out=folder / "run", quiet=True)
    return folder / "run", config


def params(path):
    return ckpt.with_prefix(ckpt.load(path)[0], "param")


def newest(run):
    return ckpt.list_checkpoints(run / "checkpoints")[-1]


def fresh_net(config, *overrides, dtype=np.float32):
    return build_net(load_config(config, overrides), 10, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_parameter_of_the_same_name_is_copied_exactly(source, dtype):
    run, config = source
    net = fresh_net(config, dtype=dtype)
    found, sha256, taken, kept = copy_weights(net, run)
    assert found == run / "checkpoints" / "best.npz"  # a run folder means its best
    assert sha256 == hashlib.sha256(found.read_bytes()).hexdigest()
    assert taken == ["fc1.W", "fc1.b", "fc2.W", "fc2.b"] and kept == []
    for name, a in params(found).items():
        assert net.params[name].data.dtype == dtype
        assert np.array_equal(net.params[name].data, a.astype(dtype)), name


def test_a_run_folder_without_best_gives_its_newest_checkpoint(source, tmp_path):
    run = shutil.copytree(source[0], tmp_path / "run")
    (run / "checkpoints" / "best.npz").unlink()
    assert copy_weights(fresh_net(source[1]), run)[0] == newest(run)


def test_a_renamed_last_layer_keeps_its_initialiser_and_trains(source, tmp_path):
    """Caffe's fine-tuning: rename the layer to replace, here also with another width; fc1 is
    frozen (lr_mult 0) so the run's checkpoints show it still holds the copied weights."""
    run, config = source
    change = ["net.layers[3].name=head", "net.layers[3].out=4", "net.layers[0].lr_mult=0"]
    net = fresh_net(config, *change)
    initial = net.state_dict()
    _, _, taken, kept = copy_weights(net, run)
    assert taken == ["fc1.W", "fc1.b"] and kept == ["head.W", "head.b"]
    assert np.array_equal(net.params["head.W"].data, initial["head.W"])
    assert np.array_equal(net.params["head.W"].data, fresh_net(config, *change).params["head.W"].data)

    # 4 classes where the data has 3: the head's fourth output is never a target
    lines = []
    out, rows = api.train(config, out=tmp_path / "tuned", weights=run, overrides=change,
                          log=lines.append)
    assert lines[0] == (f"weights from {run / 'checkpoints' / 'best.npz'}: fc1.W, fc1.b "
                        f"(head.W, head.b kept their initialisers)")
    assert len(rows) == 2 and rows[-1]["train_loss"] < rows[0]["train_loss"]
    tuned = params(newest(out))
    source_params = params(run / "checkpoints" / "best.npz")
    for name in ("fc1.W", "fc1.b"):
        assert np.array_equal(tuned[name], source_params[name]), name
    assert not np.array_equal(tuned["head.W"], initial["head.W"])


def test_only_the_weights_are_taken(source, tmp_path):
    """The source's solver state, epoch, iteration and generators stay behind: a run from its
    best.npz equals one from a file holding only the parameters, and starts at epoch 0."""
    run, config = source
    bare = tmp_path / "bare.npz"
    ckpt.save(bare, ckpt.prefixed(params(run / "checkpoints" / "best.npz"), "param"), {})
    _, rows = api.train(config, out=tmp_path / "a", weights=run, quiet=True)
    api.train(config, out=tmp_path / "b", weights=bare, quiet=True)
    a, meta = ckpt.load(newest(tmp_path / "a"))
    b, _ = ckpt.load(newest(tmp_path / "b"))
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert [r["epoch"] for r in rows] == [1, 2] and meta["iteration"] == 2 * 13
    assert not np.array_equal(a["param/fc1.W"], params(run / "checkpoints" / "best.npz")["fc1.W"])


def test_the_run_records_where_its_weights_came_from(source, tmp_path):
    run, config = source
    out, _ = api.train(config, out=tmp_path / "tuned", weights=run, quiet=True)
    best = run / "checkpoints" / "best.npz"
    record = {"path": str(best.resolve()), "sha256": hashlib.sha256(best.read_bytes()).hexdigest()}
    for path in (out / "checkpoints").iterdir():
        assert ckpt.load(path)[1]["weights"] == record, path.name
    text = (out / "config.yaml").read_text()
    assert f"# weights: {json.dumps(record)}\n" in text
    assert load_config(out / "config.yaml") == load_config(config, [])  # a comment, no key
    plain, _ = api.train(config, out=tmp_path / "plain", quiet=True)
    assert ckpt.load(newest(plain))[1]["weights"] is None
    assert "weights" not in (plain / "config.yaml").read_text()


@pytest.mark.parametrize("stop", [7, None], ids=["mid-epoch", "before-any-checkpoint"])
def test_a_run_from_weights_stopped_and_resumed_equals_one_run(source, tmp_path, monkeypatch,
                                                               stop):
    """Resumed from its checkpoint, the run goes on as usual; stopped before its first one, a
    resume starts it again from the weights its config.yaml names."""
    run, config = source
    change = ["net.layers[3].name=head", "solver.epochs=3"]
    whole, _ = api.train(config, out=tmp_path / "whole", weights=run, overrides=change,
                         quiet=True)
    if stop:
        tiny_runs.stop_at(monkeypatch, stop)
        with pytest.raises(train_module.Interrupted):
            api.train(config, out=tmp_path / "stopped", weights=run, overrides=change,
                      quiet=True)
        monkeypatch.undo()
    else:  # as a kill in the first epoch leaves it
        api.train(config, out=tmp_path / "stopped", weights=run, overrides=change, quiet=True)
        for path in (tmp_path / "stopped" / "checkpoints").iterdir():
            path.unlink()
        (tmp_path / "stopped" / "metrics.csv").unlink()
    lines = []
    api.train(resume=tmp_path / "stopped", log=lines.append)
    assert any(line.startswith("weights from ") for line in lines) == (stop is None)
    a, meta_a = ckpt.load(newest(whole))
    b, meta_b = ckpt.load(newest(tmp_path / "stopped"))
    assert sorted(a) == sorted(b) and meta_a["iteration"] == meta_b["iteration"]
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert meta_b["weights"] == meta_a["weights"] is not None
    notes = [[line for line in (folder / "config.yaml").read_text().splitlines()
              if line.startswith("#")] for folder in (whole, tmp_path / "stopped")]
    assert notes[0] == notes[1] and len(notes[0]) == 4


def started_then_killed(source, tmp_path):
    """A run begun from a copy of the source run's weights and killed in its first epoch,
    before any checkpoint; returns the run and the checkpoint its weights came from."""
    run = shutil.copytree(source[0], tmp_path / "source")
    out, _ = api.train(source[1], out=tmp_path / "tuned", weights=run, quiet=True)
    for path in (out / "checkpoints").iterdir():
        path.unlink()
    (out / "metrics.csv").unlink()
    return out, run / "checkpoints" / "best.npz"


def test_a_restart_refuses_weights_that_changed_since_the_run_began(source, tmp_path):
    """Retrained in place, say: the run would start again from other weights, without a word."""
    out, best = started_then_killed(source, tmp_path)
    before = (out / "config.yaml").read_bytes()
    first = ckpt.list_checkpoints(source[0] / "checkpoints")[0]  # epoch 1's
    shutil.copy(first, best)  # a checkpoint of the same network, with other weights
    with pytest.raises(CheckpointError, match=r"has changed since the run started from it "
                       r"\(sha256 [0-9a-f]{12}\.\.\., now [0-9a-f]{12}\.\.\.\)") as info:
        api.train(resume=out, quiet=True)
    assert info.value.source == str(best.resolve())
    assert f"the run {out} started from it" in str(info.value)
    assert (out / "config.yaml").read_bytes() == before and not list((out / "checkpoints").iterdir())


def test_a_restart_whose_weights_are_gone_says_where_they_were_named(source, tmp_path):
    out, best = started_then_killed(source, tmp_path)
    best.unlink()
    proc = bpnet("train", "--resume", out)
    assert_clean_error(proc, str(best.resolve()), "(the weights line of its config.yaml)")


def test_a_run_recorded_with_the_path_alone_restarts_without_the_digest(source, tmp_path):
    """An earlier bpnet recorded the path alone, in config.yaml and in its checkpoints."""
    out, best = started_then_killed(source, tmp_path)
    config = out / "config.yaml"
    record = json.dumps({"path": str(best.resolve()), "sha256": hashlib.sha256(best.read_bytes()).hexdigest()})
    config.write_text(config.read_text().replace(record, json.dumps(str(best.resolve()))))
    api.train(resume=out, quiet=True)  # and records the digest from now on
    assert ckpt.load(newest(out))[1]["weights"] == json.loads(record)
    assert f"# weights: {record}\n" in config.read_text()


def test_a_checkpoint_recording_the_path_alone_resumes(source, tmp_path, monkeypatch):
    run = tmp_path / "tuned"
    tiny_runs.stop_at(monkeypatch, 7)
    with pytest.raises(train_module.Interrupted):
        api.train(source[1], out=run, weights=source[0], quiet=True)
    monkeypatch.undo()
    path = newest(run)
    arrays, meta = ckpt.load(path)
    meta["weights"] = meta["weights"]["path"]  # as an earlier bpnet wrote it
    ckpt.save(path, arrays, {k: v for k, v in meta.items() if k not in ("format", "version")})
    api.train(resume=run, quiet=True)
    assert ckpt.load(newest(run))[1]["weights"] == {"path": meta["weights"], "sha256": None}


@pytest.mark.parametrize("line", ['"unclosed', '{"path": 3, "sha256": null}', '["a.npz"]',
                                  '{"path": "a.npz", "sha256": "abc"}'])
def test_a_damaged_weights_line_is_one_line_naming_config_yaml(source, tmp_path, line):
    out, _ = started_then_killed(source, tmp_path)
    config = out / "config.yaml"
    text = config.read_text().splitlines(keepends=True)
    i = next(i for i, t in enumerate(text) if t.startswith("# weights: "))
    text[i] = f"# weights: {line}\n"
    config.write_text("".join(text))
    assert_clean_error(bpnet("train", "--resume", out), f"{config}: ",
                       "does not give a file's path and sha256")


def test_a_parameter_of_another_shape_is_an_error_naming_it_and_both_shapes(source, tmp_path):
    """As in Caffe, which refuses to copy a blob of another shape and says to rename the layer:
    skipping it would leave a layer at its initialiser without a word."""
    run, config = source
    with pytest.raises(CheckpointError) as info:
        copy_weights(fresh_net(config, "net.layers[3].out=4"), run)
    assert info.value.source == str(run / "checkpoints" / "best.npz")
    assert "'fc2.W' has shape (3, 16) in the checkpoint but (4, 16) in this network" in str(
        info.value) and "rename it" in str(info.value)
    proc = bpnet("train", config, "--out", tmp_path / "tuned", "--weights", run, "--set",
                 "net.layers[3].out=4")
    assert_clean_error(proc, "best.npz", "'fc2.W'", "(3, 16)", "(4, 16)")
    assert not (tmp_path / "tuned" / "config.yaml").exists()


def test_a_checkpoint_sharing_no_parameter_name_is_an_error(source):
    run, config = source
    net = fresh_net(config, "net.layers[0].name=a", "net.layers[3].name=b")
    with pytest.raises(CheckpointError, match="holds none of this network's parameters"
                       r" \(a.W, a.b, b.W, b.b\), only fc1.W, fc1.b, fc2.W, fc2.b"):
        copy_weights(net, run)


def test_a_config_given_as_weights_says_to_give_its_run(source):
    run, config = source
    with pytest.raises(CheckpointError, match="is a config file, not a checkpoint or run folder"):
        copy_weights(fresh_net(config), run / "config.yaml")


def test_weights_with_resume_is_refused(source, tmp_path):
    run, config = source
    copy = shutil.copytree(run, tmp_path / "run")
    saved = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="--weights or --resume, not both"):
        api.train(resume=copy, weights=run, overrides=["solver.epochs=3"])
    assert_clean_error(bpnet("train", "--resume", copy, "--weights", run), "--weights",
                       "--resume")
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == saved


def _nan(arrays):
    arrays["param/fc2.b"] = np.full(3, np.nan, np.float32)


def _text(arrays):
    arrays["param/fc1.W"] = np.full((16, 10), "x")


def _huge(arrays):  # finite in the file, infinite in the float32 network
    arrays["param/fc1.W"] = np.full((16, 10), 1e300)


@pytest.mark.parametrize("damage,words", [
    (_nan, ["'fc2.b' holds NaN or infinite values"]),
    (_text, ["'fc1.W' is a <U1 array", "expected real floating point"]),
    (_huge, ["'fc1.W' holds NaN or infinite values (as float32)"]),
    (None, ["not an .npz archive"]),
], ids=["nan", "text", "huge", "no-npz"])
def test_a_damaged_checkpoint_is_refused_in_one_line(source, tmp_path, damage, words):
    run, config = source
    path = tmp_path / "damaged.npz"
    if damage is None:
        path.write_text("garbage\n")
    else:
        arrays, meta = ckpt.load(run / "checkpoints" / "best.npz")
        damage(arrays)
        ckpt.save(path, arrays, meta)
    proc = bpnet("train", config, "--out", tmp_path / "tuned", "--weights", path)
    assert_clean_error(proc, str(path), *words)
    assert "allow_pickle" not in proc.stderr


def test_a_missing_weights_path_is_one_line(source, tmp_path):
    proc = bpnet("train", source[1], "--out", tmp_path / "tuned", "--weights", tmp_path / "none")
    assert_clean_error(proc, str(tmp_path / "none"), "neither a checkpoint file nor a run folder")
