"""Write the small datasets behind the regression and binary example configs.

    python scripts/make_toy_data.py      # writes data/toy/*.csv, deterministic (seeded)

moons_*.csv: two interleaved half-circles in the plane with noise, label 0 or 1 (binary).
wave_*.csv:  y = sin(3 x1) cos(2 x2) + 0.5 x3 + noise, x uniform on [-1, 1]^3 (regression).
"""

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "data" / "toy"


def moons(rng, n):
    angle = rng.uniform(0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.where(label, 1 - np.cos(angle), np.cos(angle))
    y = np.where(label, 0.5 - np.sin(angle), np.sin(angle))
    return np.column_stack([x, y]) + rng.normal(0, 0.1, (n, 2)), label


def wave(rng, n):
    x = rng.uniform(-1, 1, (n, 3))
    y = np.sin(3 * x[:, 0]) * np.cos(2 * x[:, 1]) + 0.5 * x[:, 2] + rng.normal(0, 0.05, n)
    return x, y


def write(path, x, y, names, target):
    header = ",".join(names + [target])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.6g")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    for split, n in (("train", 2000), ("test", 500)):
        write(OUT / f"moons_{split}.csv", *moons(rng, n), ["x1", "x2"], "label")
        write(OUT / f"wave_{split}.csv", *wave(rng, n), ["x1", "x2", "x3"], "y")


if __name__ == "__main__":
    main()
