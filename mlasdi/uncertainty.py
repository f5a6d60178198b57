"""The spread of a ROM's predictions over samples of its GP, and whether it covers the truth.

For parameters mu, ``n_samples`` coefficient sets are drawn from the GP posterior of each latent
dynamics coefficient (independently, as GPLaSDI does), each latent ODE is integrated exactly from
z0 = enc(u0(mu)) and decoded with every stage (residual stages decode the same sampled latent
trajectories). The samples are reduced as they are made: parameters in chunks, samples in
chunks merged by a running mean and variance (:class:`RunningMoments`), and per-sample values
kept only for one chunk of parameters when quantiles are asked for, so memory is bounded by
``chunk_elements`` whatever the number of parameters, times and samples.

Intervals. The central interval of level p is ``prediction +- z_p * std``: ``prediction`` is the
reported one (GP-mean coefficients), ``std`` the sample standard deviation (ddof 1) and
z_p = Phi^-1((1 + p) / 2). Sample quantiles are available too (:func:`iter_spread`), but with 20
samples their central intervals are biased low: an interval between sample quantiles covers a
new draw of the same distribution with probability about p (S - 1) / (S + 1), 81 % instead of 90 %.
A calibrated interval multiplies the spread by a scale chosen on held-out parameters
(:func:`calibration_scale`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mlasdi.dynamics import integrate_expm_uniform, integrate_rk4, split_coefficients
from mlasdi.metrics import max_relative_error

if TYPE_CHECKING:
    from mlasdi.rom import MultiStageROM

NOMINAL_LEVELS = (0.5, 0.8, 0.9, 0.95)
# Decoded values held at once (samples x parameters x times x state), 16 MiB in float32: the
# reductions over a chunk then run from the cache. benchmarks/greedy_round.py at 101 levels: 2.6 s
# a round, against 5.9 s with 2**25 (memory-bound passes) and 5.2 s with 2**18 (call overhead).
CHUNK_ELEMENTS = 2**22


class RunningMoments:
    """Mean and variance over axis 0 of batches given one after another.

    Each batch [k, ...] is reduced by itself and merged with the running moments by Chan, Golub
    and LeVeque's pairwise update (Welford's for batches), which stays accurate where the naive
    sum of squares cancels. Tensors keep the dtype of the first batch.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, batch: torch.Tensor) -> None:
        k = batch.shape[0]
        if k == 0:
            return
        # Squared in place: one batch-sized temporary, not two (torch.var_mean over the leading
        # axis measured twice as slow on a CPU).
        batch_mean = batch.mean(0)
        centred = batch - batch_mean
        batch_m2 = centred.square_().sum(0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = k, batch_mean, batch_m2
            return
        total = self.count + k
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + batch_m2 + delta * delta * (self.count * k / total)
        self.count = total

    def variance(self, ddof: int = 0) -> torch.Tensor:
        if self.m2 is None or self.count <= ddof:
            raise ValueError(f"need more than {ddof} values for a variance, have {self.count}")
        return self.m2 / (self.count - ddof)

    def std(self, ddof: int = 0) -> torch.Tensor:
        return self.variance(ddof).sqrt()


def central_z(level: float) -> float:
    """z with P(|N(0, 1)| <= z) = ``level``, the half-width in standard deviations of a central
    interval."""
    from scipy.stats import norm

    if not 0.0 < level < 1.0:
        raise ValueError(f"an interval level must be in (0, 1), got {level!r}")
    return float(norm.ppf(0.5 + level / 2))


def coverage(truth: Any, lower: Any, upper: Any) -> float:
    """Fraction of ``truth`` inside [lower, upper] (arrays or tensors of one shape)."""
    inside = (truth >= lower) & (truth <= upper)
    return float(inside.sum()) / inside.numel() if torch.is_tensor(inside) else float(inside.mean())


def largest_std(std: torch.Tensor) -> np.ndarray:
    """[k] float64: each parameter's largest std over (t, x) of a spread ``std`` [k, n_t,
    n_state] (the ``max_std`` of a greedy round and of a row's uncertainty columns)."""
    return std.flatten(1).amax(1).double().cpu().numpy()


def sample_coefficients(
    rom: MultiStageROM, params: np.ndarray, n_samples: int, seed: int
) -> torch.Tensor:
    """Xi [n_samples, n, r + 1, r] (float64, on the ROM's device): ``n_samples`` independent draws
    from each coefficient's GP posterior at each row of ``params`` [n, n_p]. Draw 0 of seed s is
    ``rom.coefficients(params, sample_seed=s)``."""
    params = np.atleast_2d(np.asarray(params, dtype=np.float64))
    flat = rom.gp.sample(params, n_samples, seed)
    r = rom.autoencoder.latent_dim
    return torch.as_tensor(
        flat.reshape(n_samples, params.shape[0], r + 1, r), dtype=torch.float64, device=rom.device
    )


@torch.no_grad()
def sampled_predictions(
    rom: MultiStageROM,
    coefficients: torch.Tensor,
    z0: torch.Tensor,
    times: np.ndarray,
    *,
    n_stages: int | None = None,
) -> torch.Tensor:
    """Decoded samples [s, n, n_t, n_state] (the ROM's dtype) of coefficients [s, n, r + 1, r]
    from latent initial states z0 [n, r] at uniform ``times`` [n_t], with the first ``n_stages``
    stages (default all). The ROM's integrator: ``expm`` exactly (:func:`~mlasdi.dynamics.
    integrate_expm_uniform`), ``rk4`` as in prediction. Samples that blow up are kept: they
    make an infinite or NaN spread, the largest there is, instead of an error."""
    s, n, r = coefficients.shape[0], coefficients.shape[1], z0.shape[-1]
    A, b = split_coefficients(coefficients.reshape(s * n, r + 1, r))
    z0 = z0.to(torch.float64).expand(s, n, r).reshape(s * n, r)
    times_t = torch.as_tensor(times, dtype=torch.float64, device=z0.device)
    if rom.config.integrator == "expm":
        dt = float(times[1] - times[0]) if len(times) > 1 else 0.0
        Z = integrate_expm_uniform(A, b, z0, len(times), dt)
    else:
        Z = integrate_rk4(A, b, z0, times_t, rom.config.rk4_substeps)
    Z = Z.to(rom.dtype).reshape(s, n, len(times), r)
    n_stages = rom.n_stages if n_stages is None else n_stages
    for stage, prediction in enumerate(rom.decode_by_stage(Z), start=1):
        if stage == n_stages:
            return prediction
    raise ValueError(f"n_stages must be in 1..{rom.n_stages}, got {n_stages}")


@dataclass
class Spread:
    """The spread at the parameters ``rows`` (of the parameters asked for): sample ``mean`` and
    ``std`` (ddof 1) [k, n_t, n_state], and ``quantiles`` [n_q, k, n_t, n_state] (linear
    interpolation between order statistics, as numpy's default; None when none were asked for).
    """

    rows: slice
    mean: torch.Tensor
    std: torch.Tensor
    quantiles: torch.Tensor | None = None


def _sample_quantiles(samples: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Quantiles along axis 0 (numpy's default 'linear' method), for any size of the rest."""
    ordered = samples.sort(0).values
    last = samples.shape[0] - 1
    out = []
    for q in qs:
        position = q * last
        low = math.floor(position)
        high = min(low + 1, last)
        out.append(torch.lerp(ordered[low], ordered[high], position - low))
    return torch.stack(out)


def _uniform_times(rom: MultiStageROM, times: np.ndarray | None) -> np.ndarray:
    times = rom.times if times is None else np.asarray(times, dtype=np.float64)
    steps = np.diff(times)
    if steps.size and not np.allclose(steps, steps[0], rtol=1e-9, atol=0.0):
        raise ValueError("the spread is computed on uniform times only")
    return times


def _chunking(
    n_samples: int, per_sample: int, with_quantiles: bool, chunk_elements: int
) -> tuple[int, int]:
    """(samples, parameters) decoded at once so that about ``chunk_elements`` values are held:
    all samples of a parameter when quantiles need them, else as many as fit."""
    if n_samples < 2:
        raise ValueError(f"a spread needs n_samples >= 2, got {n_samples}")
    if with_quantiles:
        samples = n_samples
    else:
        samples = max(1, min(n_samples, chunk_elements // per_sample))
    return samples, max(1, chunk_elements // (per_sample * samples))


@torch.no_grad()
def spread_of(
    rom: MultiStageROM,
    coefficients: torch.Tensor,
    u0: np.ndarray | torch.Tensor,
    times: np.ndarray,
    *,
    samples_per_chunk: int,
    quantiles: Sequence[float] = (),
    n_stages: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(mean, std, quantiles) over the samples of coefficients [s, k, r + 1, r] from u0
    [k, n_state]; ``samples_per_chunk`` samples are decoded at a time (all of them when
    ``quantiles`` are asked for)."""
    z0 = rom.autoencoder.encode(rom.tensor(u0))
    moments = RunningMoments()
    n_samples = coefficients.shape[0]
    step = n_samples if quantiles else samples_per_chunk
    for s in range(0, n_samples, step):
        batch = sampled_predictions(rom, coefficients[s : s + step], z0, times, n_stages=n_stages)
        moments.update(batch)
    q = _sample_quantiles(batch, quantiles) if quantiles else None
    return moments.mean, moments.std(ddof=1), q  # type: ignore[return-value]


@torch.no_grad()
def iter_spread(
    rom: MultiStageROM,
    params: np.ndarray,
    u0: np.ndarray | torch.Tensor,
    *,
    n_samples: int = 20,
    seed: int = 0,
    quantiles: Sequence[float] = (),
    times: np.ndarray | None = None,
    n_stages: int | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Iterator[Spread]:
    """The GP-sample spread at ``params`` [n, n_p] with initial states ``u0`` [n, n_state], one
    chunk of parameters at a time (in order), at ``times`` (uniform; default ``rom.times``) with
    the first ``n_stages`` stages (default all).

    The coefficients of all parameters are drawn first (:func:`sample_coefficients` with
    ``seed``), so the result does not depend on the chunking. About ``chunk_elements`` decoded
    values are held at once: samples in sub-chunks merged by :class:`RunningMoments`, or, with
    ``quantiles``, all ``n_samples`` of fewer parameters.
    """
    times = _uniform_times(rom, times)
    plan = _chunked(rom, params, times, n_samples, seed, bool(quantiles), chunk_elements)
    for rows, coefficients, samples in plan:
        mean, std, q = spread_of(
            rom,
            coefficients,
            u0[rows],
            times,
            samples_per_chunk=samples,
            quantiles=quantiles,
            n_stages=n_stages,
        )
        yield Spread(rows, mean, std, q)


def _chunked(
    rom: MultiStageROM,
    params: np.ndarray,
    times: np.ndarray,
    n_samples: int,
    seed: int,
    with_quantiles: bool,
    chunk_elements: int,
) -> Iterator[tuple[slice, torch.Tensor, int]]:
    """(rows, their sampled coefficients, samples decoded at once) for one chunk of ``params``
    after another. The coefficients of all parameters are drawn first, so the result does not
    depend on the chunking."""
    params = np.atleast_2d(np.asarray(params, dtype=np.float64))
    samples, per_chunk = _chunking(
        n_samples, len(times) * rom.autoencoder.n_state, with_quantiles, chunk_elements
    )
    coefficients = sample_coefficients(rom, params, n_samples, seed)
    for start in range(0, params.shape[0], per_chunk):
        rows = slice(start, min(start + per_chunk, params.shape[0]))
        yield rows, coefficients[:, rows], samples


def predict_spread(
    rom: MultiStageROM, params: np.ndarray, u0: np.ndarray | torch.Tensor, **options: Any
) -> Spread:
    """:func:`iter_spread` gathered into one :class:`Spread` of every row of ``params`` (for
    sets whose spread fits in memory: 2 x n x n_t x n_state values plus the quantiles). The
    reported prediction stays ``rom.predict``, the GP mean."""
    chunks = list(iter_spread(rom, params, u0, **options))
    quantiles = None if chunks[0].quantiles is None else torch.cat([c.quantiles for c in chunks], 1)  # type: ignore[misc]
    return Spread(
        slice(0, chunks[-1].rows.stop),
        torch.cat([c.mean for c in chunks]),
        torch.cat([c.std for c in chunks]),
        quantiles,
    )


@dataclass(frozen=True)
class UncertaintyReport:
    """How well the spread of :func:`assess` describes the error of the reported prediction.

    ``coverage[i]``: the fraction of true values (over all parameters, times and state entries)
    inside the central interval of level ``levels[i]``, ``prediction +- scale * z * std``;
    ``max_std`` [n]: each parameter's largest std over (t, x); ``max_error`` [n]: its r(mu), the
    max relative error of the prediction (:mod:`mlasdi.metrics`). ``calibrated[i]``: the
    coverage of the same intervals with the spread times ``calibrated_scale`` instead (empty
    when none was given).
    """

    levels: tuple[float, ...]
    coverage: tuple[float, ...]
    scale: float
    max_std: np.ndarray
    max_error: np.ndarray
    calibrated_scale: float | None = None
    calibrated: tuple[float, ...] = ()

    @property
    def calibration_curve(self) -> list[tuple[float, float]]:
        """(nominal, empirical) coverage pairs."""
        return list(zip(self.levels, self.coverage, strict=True))

    @property
    def spearman(self) -> float:
        """Spearman's rank correlation of ``max_std`` with ``max_error`` (NaN for fewer than 3
        parameters or a constant one)."""
        from scipy.stats import spearmanr

        if self.max_std.size < 3 or np.ptp(self.max_std) == 0 or np.ptp(self.max_error) == 0:
            return float("nan")
        return float(spearmanr(self.max_std, self.max_error).statistic)


@torch.no_grad()
def _compared(
    rom: MultiStageROM,
    params: np.ndarray,
    truth: Any,
    u0: np.ndarray | torch.Tensor | None,
    *,
    n_samples: int = 20,
    seed: int = 0,
    times: np.ndarray | None = None,
    n_stages: int | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(truth, prediction, std) [k, n_t, n_state] for one chunk of parameters after another; the
    truth is read a chunk at a time (``truth[start:stop]``)."""
    params = np.atleast_2d(np.asarray(params, dtype=np.float64))
    times = _uniform_times(rom, times)
    if truth.shape[1] != times.size:
        raise ValueError(f"truth has {truth.shape[1]} times but the spread {times.size}")
    n_stages = rom.n_stages if n_stages is None else n_stages
    plan = _chunked(rom, params, times, n_samples, seed, False, chunk_elements)
    mean = rom.coefficients(params)  # once: per chunk, the GP's cost outgrows the chunk's
    for rows, coefficients, samples in plan:
        U = rom.tensor(truth[rows])
        first = U[:, 0] if u0 is None else rom.tensor(u0[rows])
        _, std, _ = spread_of(
            rom, coefficients, first, times, samples_per_chunk=samples, n_stages=n_stages
        )
        Z = rom.latent_trajectories(params[rows], first, times=times, coefficients=mean[rows])
        *_, prediction = itertools.islice(rom.decode_by_stage(Z), n_stages)
        yield U, prediction, std


def assess(
    rom: MultiStageROM,
    params: np.ndarray,
    truth: Any,
    *,
    u0: np.ndarray | torch.Tensor | None = None,
    levels: Sequence[float] = NOMINAL_LEVELS,
    scale: float = 1.0,
    calibrated_scale: float | None = None,
    **spread: Any,
) -> UncertaintyReport:
    """Coverage of the central intervals of ``levels`` (their spread times ``scale``, and times
    ``calibrated_scale`` too when given: one pass over the samples for both), and each
    parameter's largest std and max error, against ``truth`` [n, n_t, n_state] (an array, or
    anything whose ``truth[start:stop]`` reads those rows, e.g. a
    :class:`~mlasdi.data.SnapshotReader`) at ``params`` [n, n_p]. ``u0`` defaults to the
    truth's first snapshots. ``spread``: ``n_samples``, ``seed``, ``times``, ``n_stages`` and
    ``chunk_elements``, as :func:`iter_spread` (with its defaults)."""
    z = torch.tensor([central_z(level) for level in levels], dtype=torch.float64)
    scales = [scale] if calibrated_scale is None else [scale, calibrated_scale]
    inside = torch.zeros(len(scales), len(levels), dtype=torch.float64)
    total = 0
    max_std, max_error = [], []
    for U, prediction, std in _compared(rom, params, truth, u0, **spread):
        error = (U - prediction).abs()
        for j, c in enumerate(scales):
            for i, half_width in enumerate(z.tolist()):
                inside[j, i] += float((error <= c * half_width * std).sum())
        total += error.numel()
        max_std.append(largest_std(std))
        max_error.append(max_relative_error(U, prediction).double().cpu().numpy())
    covered = (inside / total).tolist()
    return UncertaintyReport(
        levels=tuple(float(level) for level in levels),
        coverage=tuple(covered[0]),
        scale=float(scale),
        max_std=np.concatenate(max_std),
        max_error=np.concatenate(max_error),
        calibrated_scale=calibrated_scale,
        calibrated=tuple(covered[1]) if calibrated_scale is not None else (),
    )


def calibration_scale(
    rom: MultiStageROM,
    params: np.ndarray,
    truth: Any,
    *,
    level: float = 0.9,
    u0: np.ndarray | torch.Tensor | None = None,
    **spread: Any,
) -> float:
    """The smallest scale c for which ``prediction +- c * z * std`` covers a fraction ``level``
    of ``truth`` at ``params``: meant for held-out training parameters, with ``rom`` a ROM whose
    GP did not see them (:func:`mlasdi.rom.held_out_rom`); :func:`assess` with ``scale = c`` then
    gives the calibrated interval's coverage on the test set. Infinite where more than
    1 - ``level`` of the values are off the prediction with zero spread. Holds one float32
    value per held-out value. ``spread``: as :func:`assess`."""
    ratios = []
    for U, prediction, std in _compared(rom, params, truth, u0, **spread):
        error = (U - prediction).abs()
        ratio = torch.where(error == 0, 0.0, error / std)  # an exact value is inside any interval
        ratios.append(ratio.float().flatten().cpu().numpy())
    needed = np.quantile(np.concatenate(ratios), level, method="inverted_cdf")
    return float(needed) / central_z(level)
