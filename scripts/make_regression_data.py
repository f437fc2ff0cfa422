"""Write data/regression_random.npz: random inputs and random targets for a regression demo.

The classic first exercise for training code: a small network fitted by least squares to
targets that have nothing to do with the inputs, so the only way down for the loss is to
memorise them. Deterministic (fixed seed): running it again writes the same arrays:

    python scripts/make_regression_data.py
"""

from pathlib import Path

import numpy as np

N, D_IN, D_OUT, SEED = 200, 20, 5, 2024  # examples, input and target widths, generator seed


def main(out=Path(__file__).resolve().parent.parent / "data" / "regression_random.npz"):
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((N, D_IN)).astype(np.float32)   # x: (200, 20) standard normal
    y = rng.standard_normal((N, D_OUT)).astype(np.float32)  # y: (200, 5), independent of x
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, x=x, y=y)
    print(f"wrote {out}: x {x.shape}, y {y.shape}")


if __name__ == "__main__":
    main()
