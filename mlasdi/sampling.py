"""Where the next training points go (GPLaSDI's greedy sampling), and the full-order solves there.

Pure and independent of the training loop: a round takes the current ROM (its GP fitted on the
current training points), scores every eligible candidate with a :class:`~mlasdi.config.
SamplingConfig` criterion and returns the picks; a :class:`FOM` gives their trajectories.

- ``max_std`` (GPLaSDI's): the largest standard deviation over (t, x) of ``n_samples`` decoded
  GP samples, every candidate x sample rolled out exactly and decoded in chunks with running
  moments (:func:`mlasdi.uncertainty.iter_spread`), so memory stays bounded;
- ``coef_std``: the sum over the latent dynamics coefficients of their GP standard deviation,
  with no rollout.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from mlasdi.config import SamplingConfig
from mlasdi.interpolation import CoefficientGP
from mlasdi.uncertainty import iter_spread, largest_std

if TYPE_CHECKING:
    from mlasdi.problems.source import DataSource
    from mlasdi.rom import MultiStageROM

# Two parameter points closer than this (in units of the box) are the same point.
SAME_POINT = 1e-9


def round_due(config: SamplingConfig, iteration: int, n_points: int) -> bool:
    """Whether a greedy round follows ``iteration`` completed iterations with ``n_points``
    training points: every ``every`` iterations, before ``last_round_iter`` and below
    ``max_points`` where those are set (GPLaSDI's ``n_greedy`` and ``max_greedy_iter``)."""
    return (
        config.strategy == "greedy"
        and iteration > 0
        and iteration % config.every == 0
        and (not config.last_round_iter or iteration < config.last_round_iter)
        and (not config.max_points or n_points < config.max_points)
    )


def points_this_round(config: SamplingConfig, n_points: int) -> int:
    """How many points a round adds to ``n_points``: ``points_per_round``, fewer at
    ``max_points``."""
    if config.max_points:
        return max(0, min(config.points_per_round, config.max_points - n_points))
    return config.points_per_round


def box_corners(points: np.ndarray) -> np.ndarray:
    """The 2^n_p corners [2^n_p, n_p] of the bounding box of ``points`` [n, n_p], first axis
    outermost, low before high (a flat axis gives its one value once)."""
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    axes = [np.unique([lo, hi]) for lo, hi in zip(points.min(0), points.max(0), strict=True)]
    return np.array(list(itertools.product(*axes)), dtype=np.float64)


def initial_points(
    config: SamplingConfig, candidates: np.ndarray, explicit: np.ndarray
) -> np.ndarray:
    """The training points a greedy run starts from: the corners of the candidates' box, or
    ``explicit`` (the data's training points); a fixed run keeps ``explicit``."""
    if config.strategy == "greedy" and config.initial == "corners":
        return box_corners(candidates)
    return np.atleast_2d(np.asarray(explicit, dtype=np.float64))


def _unit_box(points: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, extent) per axis of the box around all points (a flat axis has extent 1)."""
    everything = np.concatenate([np.atleast_2d(points), *map(np.atleast_2d, others)])
    low, high = everything.min(0), everything.max(0)
    return low, np.where(high > low, high - low, 1.0)


def _distances(a: np.ndarray, b: np.ndarray, low: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] Euclidean distances in the unit box."""
    a, b = (a - low) / extent, (b - low) / extent
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def eligible(candidates: np.ndarray, existing: np.ndarray, min_distance: float) -> np.ndarray:
    """Indices of the candidates at least ``min_distance`` (and not the same point) away from
    every ``existing`` point, in the unit box of both."""
    candidates = np.atleast_2d(candidates)
    if existing.size == 0:
        return np.arange(candidates.shape[0])
    low, extent = _unit_box(candidates, existing)
    nearest = _distances(candidates, np.atleast_2d(existing), low, extent).min(1)
    return np.flatnonzero(nearest >= max(min_distance, SAME_POINT))


def pick(
    candidates: np.ndarray,
    scores: np.ndarray,
    existing: np.ndarray,
    *,
    n_points: int,
    min_distance: float = 0.0,
) -> np.ndarray:
    """Indices of up to ``n_points`` candidates [n, n_p] in decreasing ``scores`` [n] (ties: the
    first; NaN counts as the largest), each at least ``min_distance`` away from ``existing``
    points and from the earlier picks (units of the box of all of them)."""
    candidates = np.atleast_2d(np.asarray(candidates, dtype=np.float64))
    existing = np.asarray(existing, dtype=np.float64).reshape(-1, candidates.shape[1])
    low, extent = _unit_box(candidates, existing)
    order = np.argsort(-np.nan_to_num(scores, nan=np.inf), kind="stable")
    taken: list[int] = []
    limit = max(min_distance, SAME_POINT)
    for i in order:
        if len(taken) == n_points:
            break
        others = np.concatenate([existing, candidates[taken]])
        if others.size and _distances(candidates[i : i + 1], others, low, extent).min() < limit:
            continue
        taken.append(int(i))
    return np.array(taken, dtype=np.int64)


def coef_std_scores(gp: CoefficientGP, candidates: np.ndarray) -> np.ndarray:
    """[n]: the sum over coefficients of the GP's predictive std at each candidate."""
    return gp.predict(candidates)[1].sum(1)


def max_std_scores(
    rom: MultiStageROM, candidates: np.ndarray, u0: np.ndarray, **options: Any
) -> np.ndarray:
    """[n]: the largest std over (t, x) of the decoded GP samples at each candidate (initial
    states ``u0`` [n, n_state]); a sample that blew up gives +inf. ``options`` (``n_samples``,
    ``seed``, ``times``, ``n_stages``, ``chunk_elements``) as :func:`mlasdi.uncertainty.
    iter_spread`, with its defaults."""
    scores = np.empty(np.atleast_2d(candidates).shape[0])
    for chunk in iter_spread(rom, candidates, u0, **options):
        scores[chunk.rows] = largest_std(chunk.std)
    return np.nan_to_num(scores, nan=np.inf)


def next_points(
    config: SamplingConfig,
    rom: MultiStageROM,
    candidates: np.ndarray,
    u0: np.ndarray,
    train_params: np.ndarray,
    *,
    seed: int,
    **options: Any,
) -> np.ndarray:
    """Indices into ``candidates`` [n, n_p] (initial states ``u0`` [n, n_state]) of the points one
    round adds to ``train_params`` [m, n_p] (:func:`points_this_round` of them, fewer when not
    enough candidates are eligible), by ``config.criterion`` of ``rom`` (its GP fitted on
    ``train_params``). Only eligible candidates are scored. ``seed`` draws the GP samples;
    ``options`` go to :func:`max_std_scores`."""
    candidates = np.atleast_2d(np.asarray(candidates, dtype=np.float64))
    n_new = points_this_round(config, len(train_params))
    open_ = eligible(candidates, np.asarray(train_params, dtype=np.float64), config.min_distance)
    if n_new == 0 or open_.size == 0:
        return np.empty(0, dtype=np.int64)
    if config.criterion == "coef_std":
        scores = coef_std_scores(rom.gp, candidates[open_])
    else:
        scores = max_std_scores(
            rom, candidates[open_], u0[open_], n_samples=config.n_samples, seed=seed, **options
        )
    chosen = pick(
        candidates[open_],
        scores,
        train_params,
        n_points=n_new,
        min_distance=config.min_distance,
    )
    return open_[chosen]


# --------------------------------------------------------------------------------------------
# Full-order solves at the picked points
# --------------------------------------------------------------------------------------------


class FOM(Protocol):
    """Trajectories of the full-order model: ``fom(params)`` with params [n, n_p] returns the
    snapshots [n, n_t, *grid] at the data's own times (before any ``time_stride``)."""

    def __call__(self, params: np.ndarray) -> np.ndarray: ...


def parameter_key(point: np.ndarray) -> tuple[float, ...]:
    """A parameter point as a cache key: each value to 12 significant digits, so that values
    typed in a spec and computed by linspace meet."""
    return tuple(float(f"{float(v):.12g}") for v in np.ravel(point))


class CachedFOM:
    """A :class:`FOM` that solves each parameter point once: in memory, and in ``directory``
    when given (one ``.npy`` per point, written atomically), so that trials of a study sharing
    the directory do not solve a point twice. ``solves`` counts the points solved here,
    ``hits`` those found in the cache."""

    def __init__(self, fom: FOM, directory: str | os.PathLike[str] | None = None) -> None:
        self.fom = fom
        self.directory = None if directory is None else Path(directory)
        self.memory: dict[tuple[float, ...], np.ndarray] = {}
        self.solves = 0
        self.hits = 0

    def _file(self, key: tuple[float, ...]) -> Path | None:
        if self.directory is None:
            return None
        name = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
        return self.directory / f"{name}.npy"

    def _lookup(self, key: tuple[float, ...]) -> np.ndarray | None:
        if key in self.memory:
            return self.memory[key]
        path = self._file(key)
        if path is not None and path.is_file():
            self.memory[key] = np.load(path, allow_pickle=False)
            return self.memory[key]
        return None

    def _store(self, key: tuple[float, ...], snapshots: np.ndarray) -> None:
        self.memory[key] = snapshots
        path = self._file(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as f:
            np.save(f, snapshots, allow_pickle=False)
        os.replace(f.name, path)

    def __call__(self, params: np.ndarray) -> np.ndarray:
        params = np.atleast_2d(np.asarray(params, dtype=np.float64))
        keys = [parameter_key(p) for p in params]
        found = {k: v for k in dict.fromkeys(keys) if (v := self._lookup(k)) is not None}
        missing = [i for i, k in enumerate(keys) if k not in found and keys.index(k) == i]
        self.hits += len(keys) - len(missing)
        if missing:
            solved = self.fom(params[missing])
            for i, snapshots in zip(missing, solved, strict=True):
                self._store(keys[i], np.asarray(snapshots))
                found[keys[i]] = self.memory[keys[i]]
            self.solves += len(missing)
        return np.stack([found[k] for k in keys])


class FileFOM:
    """A snapshot file as the full-order model (GPLaSDI's offline mode): ``fom(params)`` reads
    the rows of those parameters, which must be in the file (else
    :class:`~mlasdi.data.DataError`). :attr:`params` is the pool."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from mlasdi.data import inspect_snapshot_file

        self.path = Path(path)
        self.params = inspect_snapshot_file(self.path).params

    def __call__(self, params: np.ndarray) -> np.ndarray:
        from mlasdi.data import DataError, load_snapshot_set

        params = np.atleast_2d(np.asarray(params, dtype=np.float64))
        low, extent = _unit_box(self.params, params)
        distance = _distances(params, self.params, low, extent)
        rows = distance.argmin(1)
        if not bool((distance[np.arange(len(rows)), rows] < SAME_POINT).all()):
            bad = params[(distance.min(1) >= SAME_POINT)][0]
            raise DataError(f"parameter {bad.tolist()} is not in the snapshot file {self.path}")
        # h5py reads increasing, distinct rows
        unique, inverse = np.unique(rows, return_inverse=True)
        return load_snapshot_set(self.path, indices=unique).snapshots[inverse]


def problem_fom(source: DataSource) -> FOM:
    """The full-order model of a data source: the built-in problems' solvers (Burgers, Vlasov,
    the oscillator) at the source's settings, or the source's snapshot file."""
    from mlasdi.problems import burgers1d, oscillator, vlasov

    solve: Callable[[np.ndarray], np.ndarray]
    if isinstance(source, burgers1d.Burgers1DData):

        def solve(params: np.ndarray) -> np.ndarray:
            return burgers1d.solve(params, nx=source.nx, nt=source.nt, progress=False).snapshots

    elif isinstance(source, vlasov.VlasovData):

        def solve(params: np.ndarray) -> np.ndarray:
            return vlasov.solve(
                params,
                nx=source.nx,
                nv=source.nv,
                periodic_field=source.periodic_field,
                progress=False,
            ).snapshots

    elif isinstance(source, oscillator.OscillatorData):

        def solve(params: np.ndarray) -> np.ndarray:
            data = oscillator.snapshot_set(params[:, 0], n_x=source.nx, n_t=source.n_t)
            return data.snapshots

    elif source.snapshot_file is not None:
        return FileFOM(source.snapshot_file)
    else:
        raise ValueError(f"problem {source.problem!r} has no full-order model to sample")
    return solve
