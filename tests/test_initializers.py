"""Initialisers draw at the scale their name promises, for every variance_norm."""

import numpy as np
import pytest

from bpnet.errors import ConfigError
from bpnet.initializers import initialize, parse_init

N_OUT, N_IN = 300, 700
FAN = {"fan_in": N_IN, "fan_out": N_OUT, "average": (N_IN + N_OUT) / 2}


def draw(init):
    return initialize(parse_init(init, "init", None), (N_OUT, N_IN), np.random.default_rng(0),
                      np.float64)


@pytest.mark.parametrize("name", ["he", "msra"])
@pytest.mark.parametrize("norm", [None, "fan_in", "fan_out", "average"])
def test_he_is_normal_with_variance_2_over_n(name, norm):
    w = draw({"type": name, **({"variance_norm": norm} if norm else {})})
    n = FAN[norm or "fan_in"]  # Caffe's MSRAFiller default
    assert abs(w.mean()) < 0.01 * np.sqrt(2 / n)
    assert w.std() == pytest.approx(np.sqrt(2 / n), rel=0.01)


@pytest.mark.parametrize("name", ["xavier", "glorot"])
@pytest.mark.parametrize("norm", [None, "fan_in", "fan_out", "average"])
def test_xavier_is_uniform_on_sqrt_3_over_n(name, norm):
    w = draw({"type": name, **({"variance_norm": norm} if norm else {})})
    limit = np.sqrt(3 / FAN[norm or "average"])  # Glorot's sqrt(6 / (n_in + n_out)) by default
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.999 * limit
    assert w.std() == pytest.approx(limit / np.sqrt(3), rel=0.01)


def test_lecun_gaussian_uniform_and_constant_scales():
    assert draw("lecun").std() == pytest.approx(np.sqrt(1 / N_IN), rel=0.01)
    assert draw({"type": "gaussian", "std": 0.3}).std() == pytest.approx(0.3, rel=0.01)
    w = draw({"type": "uniform", "range": 0.2})
    assert np.abs(w).max() <= 0.2 and w.std() == pytest.approx(0.2 / np.sqrt(3), rel=0.01)
    assert (draw({"type": "constant", "value": 1.5}) == 1.5).all()


def test_variance_norm_is_checked_and_only_where_it_means_something():
    with pytest.raises(ConfigError, match="fc1.init: found .*variance_norm.*fan_in, fan_out, "
                                          "average"):
        parse_init({"type": "he", "variance_norm": "fanin"}, "fc1.init", None)
    with pytest.raises(ConfigError, match="lecun with options"):
        parse_init({"type": "lecun", "variance_norm": "fan_in"}, "fc1.init", None)
