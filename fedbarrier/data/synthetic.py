"""The ``synthetic`` dataset's generator: Gaussian classes around smooth random mean images.

:class:`fedbarrier.data.datasets.SyntheticSpec` is the recipe and
:func:`fedbarrier.data.datasets.load_dataset` turns the arrays made here into tensors.
"""

from __future__ import annotations

import numpy as np

from fedbarrier.data.readers import RawSplits


def make_synthetic(
    num_classes: int,
    input_shape: tuple[int, int, int],
    train_size: int,
    test_size: int,
    seed: int,
    noise: float,
) -> RawSplits:
    """Float32 images (N, C, H, W) and int64 labels, exactly reproducible from the arguments.

    Each class mean is a random low-resolution (at most 4x4) image upsampled bilinearly, so the
    signal is spatially smooth and a small CNN picks it up in a few epochs. Samples are
    ``mean[y] + noise * N(0, 1)`` divided by ``sqrt(1 + noise**2)`` so pixels have unit variance.
    Means, train and test come from independent child seeds: changing ``train_size`` leaves the
    test set unchanged.
    """
    mean_rng, train_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    means = _smooth_means(mean_rng, num_classes, input_shape)
    train = _synthetic_split(train_rng, means, train_size, noise)
    test = _synthetic_split(test_rng, means, test_size, noise)
    classes = tuple(f"class_{i}" for i in range(num_classes))
    return RawSplits(train, test, classes)


def _smooth_means(rng: np.random.Generator, k: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Draw k random coarse images and upsample them to ``shape``; scaled to unit overall std."""
    c, h, w = shape
    coarse = rng.standard_normal((k, c, min(h, 4), min(w, 4)))
    means = np.einsum(
        "hi,kcij,wj->kchw",
        _upsample_matrix(h, coarse.shape[2]),
        coarse,
        _upsample_matrix(w, coarse.shape[3]),
    )
    std = means.std()
    return means / std if std > 0 else means


def _upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights, half-pixel centres (like align_corners=False)."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), lo), 1 - frac)
    np.add.at(weights, (np.arange(n_out), hi), frac)
    return weights


#: Rows generated at a time: the noise and the class means of one chunk are the only temporaries,
#: so a split of 2 million 3x16x16 images (6 GiB) needs its own size in memory, not four times it.
CHUNK = 65536


def _synthetic_split(
    rng: np.random.Generator, means: np.ndarray, n: int, noise: float, chunk: int = CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Sample n images with balanced, shuffled labels around the class means.

    Generated in chunks of ``chunk`` rows; the noise is drawn from ``rng`` in row order, so the
    result does not depend on ``chunk``.
    """
    k = means.shape[0]
    labels = rng.permutation(np.arange(n) % k)
    means32 = means.astype(np.float32)
    scale = np.float32(np.sqrt(1.0 + noise**2))
    x = np.empty((n, *means.shape[1:]), dtype=np.float32)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        draw = rng.standard_normal((rows.stop - rows.start, *means.shape[1:]), dtype=np.float32)
        draw *= np.float32(noise)
        draw += means32[labels[rows]]  # mean + noise * N(0, 1), as one expression would round
        draw /= scale
        x[rows] = draw
    return x, labels.astype(np.int64)
