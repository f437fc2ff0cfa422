"""Progress within an epoch: plain lines at most every PROGRESS_SECONDS, a bar on a terminal."""

from bpnet import progress as progress_module
from bpnet.progress import EpochProgress


def _shown(mode, monkeypatch, seconds, batches=5, done=0):
    monkeypatch.setattr(progress_module, "PROGRESS_SECONDS", seconds)
    lines = []
    progress = EpochProgress(mode, lines.append, "epoch 1/3", done, batches, lambda: "loss 0.5")
    for b in range(done, batches):
        progress.batch_done(b)
    progress.close()
    return lines


def test_lines_name_the_epoch_batch_and_running_loss(monkeypatch):
    assert _shown("lines", monkeypatch, 0) == [f"epoch 1/3: batch {b}/5, loss 0.5" for b in range(1, 6)]


def test_lines_wait_for_the_interval(monkeypatch):
    assert _shown("lines", monkeypatch, 3600) == []


def test_no_progress_shows_nothing(monkeypatch):
    assert _shown(None, monkeypatch, 0) == []


def test_bar_goes_to_stderr_and_starts_where_a_resume_left_off(monkeypatch, capsys):
    assert _shown("bar", monkeypatch, 0, batches=8, done=3) == []
    err = capsys.readouterr().err
    assert "epoch 1/3" in err and "3/8" in err  # tqdm redraws at most every 0.1 s: not 8/8
