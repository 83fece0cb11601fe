"""A validation split held out of a training split: the data the Modifier's gate is fitted on.

Anything chosen from a model's outputs (whether the Modifier helps a live set, a learned
option's maps) must be chosen on samples the model was not trained on: on training samples
the devices are over-confident and agree too well, so the Modifier looks better than it is.
:func:`holdout_split` draws the validation samples with a fixed seed, independent of the
run's seed, so every run on a dataset holds out the same samples and their results stay
paired; checkpoints record ``{"seed", "size", "of"}`` so the split can be rebuilt.
"""

from __future__ import annotations

import numpy as np

__all__ = ["VALIDATION_SEED", "holdout_split"]

VALIDATION_SEED = 17
"""Seed of the validation draw: the same samples for every run and method."""


def holdout_split(n: int, size: int, seed: int = VALIDATION_SEED
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(training indices, validation indices)`` of ``n`` samples, ``size`` held out.

    Both sorted; ``size=0`` holds out nothing.
    """
    if not 0 <= size < n:
        raise ValueError(f"the validation split must hold 0..{n - 1} of the {n} samples, "
                         f"got {size}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[size:]), np.sort(order[:size])
