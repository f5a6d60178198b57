"""Held-out training parameters: the split that decides without touching the test points.

Both the budget search (``mlasdi-study budget``) and the validation-accepted residual stages of
``mlasdi_val`` (:mod:`mlasdi.acceptance`) hold some training parameters out of what they train
and judge by the error there, so that test-only parameters are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlasdi.config import ConfigError


def validation_split(
    params_train: np.ndarray, *, fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, validation indices) into ``params_train`` [n, n_p].

    ``max(2, round(fraction * n))`` points are held out, keeping at least 2 for training (one of
    each when n is 2 or 3). Points inside the training box are preferred, then points on its
    faces, corners last: a held-out corner would turn validation into extrapolation, while test
    parameters lie inside the box. Ties are broken by a seeded permutation.
    """
    params = np.atleast_2d(np.asarray(params_train, dtype=np.float64))
    n = params.shape[0]
    if n < 2:
        raise ConfigError(f"need at least 2 training parameters to hold some out, got {n}")
    n_val = 1 if n < 4 else min(max(2, int(round(fraction * n))), n - 2)
    lo, hi = params.min(axis=0), params.max(axis=0)
    extreme = (np.isclose(params, lo) | np.isclose(params, hi)) & (hi > lo)
    rank = extreme.sum(axis=1)
    tie = np.random.default_rng(seed).permutation(n)
    order = np.lexsort((tie, rank))
    val = np.sort(order[:n_val])
    fit = np.setdiff1d(np.arange(n), val)
    return fit, val


@dataclass(frozen=True)
class Split:
    """Which training parameters are held out: ``fraction`` and the tie-breaking ``seed`` of
    :func:`validation_split`. One object, so that every part of a fit (stage-1 checkpoint
    selection, residual-stage acceptance) holds out the same parameters."""

    fraction: float = 0.2
    seed: int = 0

    def indices(self, params_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fit indices, validation indices) into ``params_train`` [n, n_p]."""
        return validation_split(params_train, fraction=self.fraction, seed=self.seed)


DEFAULT_SPLIT = Split()
