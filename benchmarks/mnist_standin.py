"""An MNIST-sized stand-in, offline: 4000 28 x 28 uint8 images in 10 classes, made from
scikit-learn's 8 x 8 digits (upscaled to 20 x 20, placed at a random offset in 28 x 28, with
pixel noise), so `mrl-deploy train` can be timed at MNIST's input size without a download.

    .venv/bin/python benchmarks/mnist_standin.py /tmp/mnist_standin.npz [--samples 4000] [--seed 0]
    time .venv/bin/mrl-deploy train /tmp/mnist_standin.npz -o /tmp/mnist_run

Used for the training-speed numbers in benchmarks/README.md (train section).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make(samples: int = 4000, seed: int = 0, size: int = 28, digit: int = 20) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(digits.target), samples)
    x = np.zeros((samples, size, size), dtype=np.float32)
    for row, index in enumerate(picks):
        image = zoom(digits.images[index] / 16.0, digit / 8, order=1)
        top, left = rng.integers(0, size - digit + 1, 2)
        x[row, top:top + digit, left:left + digit] = image
    x = np.clip(x + rng.normal(0.0, 0.05, x.shape), 0.0, 1.0)
    return (x * 255).round().astype(np.uint8), digits.target[picks].astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the .npz to write (x: N x 28 x 28 uint8, y: N)")
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x, y = make(args.samples, args.seed)
    np.savez(args.output, x=x, y=y)
    print(f"wrote {args.output}: x {x.shape} {x.dtype}, y {y.shape}, {len(np.unique(y))} classes")


if __name__ == "__main__":
    main()
