"""The benchmark's verdicts (scripts/bench.py): each ratio target against the issue's limit,
from the two runners' median epochs, with the median of the same-round ratios beside it."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench", Path(__file__).resolve().parent.parent / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def run(**epochs):
    """A net's results as bench_net gives them: a warm-up epoch, then the timed ones."""
    return {r: {"epochs": [9.0, *e], "median_s": sorted(e)[len(e) // 2]}
            for r, e in epochs.items()}


def test_a_ratio_target_is_decided_by_the_median_epochs_with_each_rounds_ratio_beside_it():
    # bpnet's median epoch from the slow state (0.4 s), PyTorch's from the fast (0.6 s)
    nets = {"small": run(bpnet=[0.2, 0.4, 0.4], torch=[0.6, 1.0, 0.6])}
    [row] = bench.targets(nets, None)
    assert row == ("small: bpnet / PyTorch <= 0.50", "0.67", "0.40", False)


def test_the_fastest_peer_is_taken_round_by_round():
    nets = {"large": run(bpnet=[1.0, 1.0, 1.0], torch=[2.0, 0.9, 2.0],
                         numpy=[0.95, 2.0, 2.0])}
    [row] = bench.targets(nets, None)
    # medians: torch 2.0, numpy 2.0 -> 0.50; rounds: 1/0.95, 1/0.9, 1/2.0 -> median 1.05
    assert row == ("large: bpnet / fastest peer <= 1.00", "0.50", "1.05", True)


def test_the_first_run_compiling_included_is_a_target_of_its_own():
    cli = {"time_to_98_s": 6.0, "cold_time_to_98_s": 16.0, "cold_train_total_s": 17.0,
           "help_s": 0.05, "overhead_s": 0.8, "train_peak_mb": 290.0}
    rows = {text: (value, met) for text, value, _, met in bench.targets({}, cli)}
    assert rows["time to 98% test accuracy < 15 s (warm kernel caches)"] == ("6.0 s", True)
    assert rows["time to 98% test accuracy < 15 s (first run: compiling included)"] == (
        "16.0 s", False)
    cli["cold_time_to_98_s"] = None  # never reached
    rows = {text: (value, met) for text, value, _, met in bench.targets({}, cli)}
    assert rows["time to 98% test accuracy < 15 s (first run: compiling included)"][1] is False
