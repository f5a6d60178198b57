"""Gaussian-process interpolation of latent-dynamics coefficients over parameter space.

One independent GP per coefficient (as in GPLaSDI), kernel Constant x Matern(nu) or x RBF
(:class:`~mlasdi.config.GPConfig`) on inputs standardised with the training parameters' mean and standard deviation; outputs normalised by
scikit-learn (``normalize_y``). Hyperparameters are fitted by maximum likelihood with seeded
restarts, so a fit is reproducible from the seed.
"""

from __future__ import annotations

import functools
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlasdi.config import GPConfig

if TYPE_CHECKING:
    from sklearn.gaussian_process.kernels import Kernel

# scikit-learn is imported where it is used: its gaussian_process package pulls in pandas (about
# a second), which `import mlasdi` should not pay for, and the core keeps pandas out of its imports.


def _base_kernel(config: GPConfig) -> Kernel:
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern

    low, high = config.length_scale_bounds
    start = min(max(1.0, low), high)  # the optimiser's first length scale, inside the bounds
    if config.kernel == "rbf":
        shape = RBF(length_scale=start, length_scale_bounds=(low, high))
    else:
        shape = Matern(length_scale=start, length_scale_bounds=(low, high), nu=config.nu)
    return ConstantKernel(1.0, (1e-4, 1e4)) * shape


@dataclass
class CoefficientGP:
    """Interpolates coefficients [n_train, n_coef] given at training parameters [n_train, n_p]."""

    config: GPConfig
    seed: int = 0

    def fit(
        self,
        params: np.ndarray,
        coefficients: np.ndarray,
        *,
        workers: int = 1,
        start: np.ndarray | None = None,
    ) -> CoefficientGP:
        """Fit one GP per column of ``coefficients`` (hyperparameters by maximum likelihood).

        ``start`` [n_coef, n_theta] (the ``kernel_theta`` of an earlier fit's :meth:`state`):
        each optimisation starts from these hyperparameters, once, instead of from the default
        and ``config.n_restarts`` random starts: a warm start, for a fit to coefficients close
        to those of the earlier one (a checkpoint selector's next checkpoint).

        The fits are independent (110 GPs with 4 restarts take seconds), so with ``workers`` > 1
        they are shared among that many threads, each with one BLAS thread; the result is the
        same as fitting them one after another. Threads, not processes: measured faster than
        both a spawned pool and the sequential fit (``benchmarks/gp_fit_workers.py``), and safe
        where a forked pool is not, inside torch's and Ray's threaded processes (a fork after
        threads can deadlock on a lock another thread held at the fork).
        """
        from sklearn.exceptions import ConvergenceWarning
        from threadpoolctl import threadpool_limits

        params = np.asarray(params, dtype=np.float64)
        coefficients = np.asarray(coefficients, dtype=np.float64)
        if params.ndim != 2 or coefficients.ndim != 2 or params.shape[0] != coefficients.shape[0]:
            raise ValueError(
                f"need params [n_train, n_p] and coefficients [n_train, n_coef], got "
                f"{params.shape} and {coefficients.shape}"
            )
        if not np.all(np.isfinite(coefficients)):
            raise ValueError("coefficients contain NaN or Inf: the latent dynamics fit diverged")
        self.input_mean = params.mean(axis=0)
        scale = params.std(axis=0)
        self.input_scale = np.where(scale > 0, scale, 1.0)
        self.train_inputs = self._standardise(params)
        self.train_targets = coefficients
        columns = np.array_split(np.arange(coefficients.shape[1]), max(1, workers))
        columns = [c for c in columns if c.size]
        with warnings.catch_warnings():
            # With a handful of training points the likelihood is often flat and a length scale
            # settles on its bound; that is expected here, not a failure. Set once around all
            # the fits: the warning filters are global, and a catch_warnings per thread would
            # restore them under another thread's feet.
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit = functools.partial(self._fit_columns, start=start)
            if len(columns) == 1:
                self.models = fit(columns[0])
                return self
            # One BLAS thread each: on kernel matrices of a few dozen rows more only contend.
            with threadpool_limits(1), ThreadPoolExecutor(len(columns)) as pool:
                chunks = list(pool.map(fit, columns))
        self.models = [gp for chunk in chunks for gp in chunk]
        return self

    def _fit_columns(self, columns: np.ndarray, start: np.ndarray | None) -> list:
        from sklearn.gaussian_process import GaussianProcessRegressor

        models = []
        for i in columns:
            kernel = _base_kernel(self.config)
            if start is not None:
                kernel = kernel.clone_with_theta(start[i])
            gp = GaussianProcessRegressor(
                kernel=kernel,
                alpha=self.config.alpha,
                normalize_y=True,
                n_restarts_optimizer=self.config.n_restarts if start is None else 0,
                random_state=np.random.RandomState(self.seed + int(i)),
            )
            gp.fit(self.train_inputs, self.train_targets[:, i])
            models.append(gp)
        return models

    def _standardise(self, params: np.ndarray) -> np.ndarray:
        return (np.asarray(params, dtype=np.float64) - self.input_mean) / self.input_scale

    def predict(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean and standard deviation, each [n, n_coef]."""
        x = self._standardise(np.atleast_2d(params))
        means, stds = zip(*(gp.predict(x, return_std=True) for gp in self.models), strict=True)
        return np.stack(means, axis=1), np.stack(stds, axis=1)

    def sample(self, params: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
        """Draws [n_samples, n, n_coef] from each coefficient's posterior (independent over n)."""
        mean, std = self.predict(params)
        rng = np.random.default_rng(seed)
        return mean[None] + std[None] * rng.standard_normal((n_samples, *mean.shape))

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that reproduce this fit exactly (no pickle)."""
        return {
            "input_mean": self.input_mean,
            "input_scale": self.input_scale,
            "train_inputs": self.train_inputs,
            "train_targets": self.train_targets,
            "kernel_theta": np.stack([gp.kernel_.theta for gp in self.models]),
        }

    @classmethod
    def from_state(cls, config: GPConfig, seed: int, state: dict[str, np.ndarray]) -> CoefficientGP:
        """Rebuild a fitted GP from :meth:`state` without re-optimising hyperparameters."""
        from sklearn.gaussian_process import GaussianProcessRegressor

        self = cls(config, seed)
        self.input_mean = state["input_mean"]
        self.input_scale = state["input_scale"]
        self.train_inputs = state["train_inputs"]
        self.train_targets = state["train_targets"]
        self.models = []
        for i, theta in enumerate(state["kernel_theta"]):
            gp = GaussianProcessRegressor(
                kernel=_base_kernel(config).clone_with_theta(theta),
                alpha=config.alpha,
                normalize_y=True,
                optimizer=None,
            )
            gp.fit(self.train_inputs, self.train_targets[:, i])
            self.models.append(gp)
        return self
