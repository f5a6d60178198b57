"""1D inviscid Burgers equation: GPLaSDI's packaged example, solved for many parameters at once.

Problem (LLNL/GPLaSDI ``examples/burgers1d.yml`` with ``src/lasdi/physics/burgers1d.py``)::

    u_t + u u_x = 0,   x in [-3, 3] periodic,   t in (0, 1],
    u(x, 0; a, w) = a exp(-x^2 / (2 w^2)),   a in [0.7, 0.9],   w in [0.9, 1.1]

Discretisation, as GPLaSDI's ``solver`` does it:

* ``nx = 1001`` nodes ``x = linspace(-3, 3, nx)`` including both ends; the last node is a periodic
  copy of the first, so the ``N = nx - 1`` unknowns are ``u_0 .. u_{N-1}`` and ``u_{-1} = u_{N-1}``;
* ``nt = 1001`` time levels ``t = linspace(0, 1, nt)`` (``dt = 1 / (nt - 1)``); every level is a
  snapshot;
* backward Euler with first-order upwind differences, ``c = dt / dx``::

      r_i(v) = -u^n_i + v_i + c (v_i^2 - v_i v_{i-1}) = 0;

* Newton's method for ``u^{n+1}``, started from ``v = u^n`` with the exact Jacobian (lower
  bidiagonal plus the periodic corner ``J[0, N-1] = -c v_0``). Each iteration updates ``v``,
  recomputes ``r(v)``, then tests ``||r(v)||_2 / ||u^n||_2 < tol`` (``tol = 1e-8``; 2-norms over the
  ``N`` unknowns); the residual of the start value is never tested, so at least one update is made.
  At most ``max_newton = 10`` iterations.
* When the test still fails after ``max_newton`` iterations, GPLaSDI stores nothing: the time level
  keeps the zeros its array was allocated with, and every later level stays zero (Newton from zero
  tests ``0 / 0``, which is never below ``tol``), so a study would train and test on those zeros.
  Here ``on_failure="raise"`` (the default) raises :class:`NewtonConvergenceError` naming the
  parameter and the time level; ``on_failure="gplasdi_zeros"`` opts in to GPLaSDI's behaviour
  and warns (:class:`NewtonConvergenceWarning`).

The linear solve of each Newton iteration is exact and O(N) per parameter: with ``d_i = p_i +
q_i d_{N-1}``, ``p`` solves the bidiagonal system without the corner (a first-order linear
recurrence, evaluated in blocks), ``q`` is the cumulative product of ``c v_i / J_ii`` (the corner's
column), and ``d_{N-1} = p_{N-1} / (1 - q_{N-1})`` closes the cycle. The diagonal dominates
(``J_ii - c v_i = 1 + c (v_i - v_{i-1}) > 0``), so the recurrences are stable.

Layout: snapshots [n_mu, nt, nx] (all ``nx`` nodes, the periodic copy included, as GPLaSDI stores
them); parameters [n_mu, 2] with columns (a, w). Every parameter runs its own Newton test, so a batch
gives the same numbers as one-by-one runs. A batch of parameters is one float64 array [N, B] (grid
major), cache-sized on CPU; the full 21 x 21 set is 441 x 1001 x 1001 doubles (3.5 GB), so
:func:`generate_snapshot_file` streams it to HDF5 batch by batch.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tqdm import tqdm

from mlasdi.config import ConfigError, choice_error
from mlasdi.data import SnapshotSet, generate_cached, load_snapshot_set
from mlasdi.problems.source import GeneratedGrid, int_key

__all__ = [
    "PARAM_NAMES",
    "Burgers1DData",
    "BurgersSettings",
    "NewtonConvergenceError",
    "NewtonConvergenceWarning",
    "NewtonReport",
    "generate_snapshot_file",
    "initial_condition",
    "integrate",
    "load_or_generate",
    "parameter_grid",
    "solve",
]

PARAM_NAMES = ("a", "w")
A_RANGE = (0.7, 0.9)
W_RANGE = (0.9, 1.1)
SOLVER_VERSION = 1
ON_FAILURE = ("raise", "gplasdi_zeros")

# Parameters per batch: the dozen [N, B] working arrays of a step stay in the 1 MiB L2 cache at
# N = 1000, B = 16 (CPU time for 441 x 1000 steps measured here: B = 8 29 s, 16 20 s, 24 20 s,
# 32 27 s); the snapshot buffer is B * 8 MB.
_BATCH = 16
# Rows per block of the blocked recurrence (about sqrt(N) keeps the Python loop short).
_BLOCK = 32


class NewtonConvergenceWarning(RuntimeWarning):
    """Newton's method did not converge at some step; GPLaSDI's zero levels were kept."""


class NewtonConvergenceError(ValueError):
    """Newton's method did not converge (``on_failure="raise"``, the default)."""


@dataclass(frozen=True)
class BurgersSettings:
    """Every setting that changes the numbers (stored with a snapshot file; a cache key).

    Attributes
    ----------
    nx : grid nodes including both ends (the last is the periodic copy of the first); >= 4.
    nt : time levels including t = 0; >= 3.
    x_min, x_max : the periodic interval.
    t_max : final time; ``dt = t_max / (nt - 1)``.
    max_newton : Newton iterations per step at most (GPLaSDI's ``maxk``).
    tol : Newton stops when ``||r|| / ||u^n|| < tol`` (GPLaSDI's ``convergence_threshold``).
    on_failure : ``"raise"`` (a Newton failure is an error) or ``"gplasdi_zeros"`` (GPLaSDI's
        behaviour: the level and all later ones stay 0, with a warning).
    """

    nx: int = 1001
    nt: int = 1001
    x_min: float = -3.0
    x_max: float = 3.0
    t_max: float = 1.0
    max_newton: int = 10
    tol: float = 1e-8
    on_failure: str = "raise"

    def __post_init__(self) -> None:
        for name, least in (("nx", 4), ("nt", 3), ("max_newton", 1)):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
                raise ConfigError(f"{name} must be an integer, got {n!r}")
            if n < least:
                raise ConfigError(f"{name} must be >= {least}, got {n}")
        for name in ("x_min", "x_max", "t_max", "tol"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be finite, got {getattr(self, name)}")
        if not self.x_max > self.x_min:
            raise ConfigError(f"x_max ({self.x_max}) must exceed x_min ({self.x_min})")
        if not (self.t_max > 0 and self.tol > 0):
            raise ConfigError(f"t_max and tol must be positive, got {self.t_max} and {self.tol}")
        if self.on_failure not in ON_FAILURE:
            raise ConfigError(choice_error("on_failure", self.on_failure, ON_FAILURE))

    @property
    def dx(self) -> float:
        """GPLaSDI's ``(xmax - xmin) / (grid_size - 1)``."""
        return (self.x_max - self.x_min) / (self.nx - 1)

    @property
    def dt(self) -> float:
        """GPLaSDI's ``simulation_time / (number_of_timesteps - 1)``."""
        return self.t_max / (self.nt - 1)

    @property
    def courant(self) -> float:
        """``c = dt / dx`` (GPLaSDI's ``Dt / Dx``)."""
        return self.dt / self.dx

    def grid(self) -> np.ndarray:
        """The ``nx`` nodes ``linspace(x_min, x_max, nx)`` (both ends included)."""
        return np.linspace(self.x_min, self.x_max, self.nx)

    def times(self) -> np.ndarray:
        """The ``nt`` snapshot times ``linspace(0, t_max, nt)``."""
        return np.linspace(0.0, self.t_max, self.nt)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable settings stored in a snapshot file (with the fixed scheme)."""
        out: dict[str, Any] = {"problem": "burgers1d", "solver_version": SOLVER_VERSION}
        out.update(
            {k: (v if not isinstance(v, np.integer) else int(v)) for k, v in asdict(self).items()}
        )
        out.update(
            {
                "equation": "u_t + u u_x = 0, periodic; u0 = a exp(-x^2 / (2 w^2))",
                "time_integrator": "backward-euler",
                "spatial_scheme": "first-order-upwind",
                "nonlinear_solver": "newton, test ||r(u^(k))||_2 / ||u^n||_2 < tol after each update",
                "layout": "snapshots[mu, t, x]; x includes the periodic copy of x_min at x_max",
            }
        )
        return out


# --------------------------------------------------------------------------------------------
# Parameters and initial condition
# --------------------------------------------------------------------------------------------


def parameter_grid(n_a: int = 21, n_w: int = 21) -> np.ndarray:
    """The uniform parameter grid on a in [0.7, 0.9], w in [0.9, 1.1]: [n_a * n_w, 2] rows (a, w).

    Order: a-major (row ``i * n_w + j`` is ``(a_i, w_j)``), GPLaSDI's ``meshgrid(indexing="ij")``.
    The values are GPLaSDI's doubles: ``a = linspace(0.7, 0.9, n_a)`` (its ``uniform`` test space);
    w is the example's decimal list ``0.9, 0.91, ..., 1.1`` when ``n_w = 21`` (6 of its entries are
    one ulp away from ``linspace``) and ``linspace(0.9, 1.1, n_w)`` otherwise.
    """
    if n_a < 1 or n_w < 1:
        raise ConfigError(f"grid sizes must be positive, got {n_a} x {n_w}")
    a = np.linspace(*A_RANGE, n_a)
    if n_w == 21:
        w = np.array([round(0.9 + 0.01 * j, 2) for j in range(21)])
    else:
        w = np.linspace(*W_RANGE, n_w)
    aa, ww = np.meshgrid(a, w, indexing="ij")
    return np.stack([aa.ravel(), ww.ravel()], axis=1)


def _check_params(params: np.ndarray) -> np.ndarray:
    params = np.atleast_2d(np.asarray(params, dtype=np.float64))
    if params.ndim != 2 or params.shape[1] != 2 or params.shape[0] == 0:
        raise ConfigError(f"params must have shape [n, 2] with columns (a, w), got {params.shape}")
    if not np.all(np.isfinite(params)):
        raise ConfigError("params must be finite")
    bad = np.flatnonzero(params[:, 0] < 0)
    if bad.size:
        raise ConfigError(
            f"amplitude a must be >= 0 (the upwind differences assume u >= 0); "
            f"got a = {params[bad[0], 0]} (row {bad[0]})"
        )
    bad = np.flatnonzero(params[:, 1] == 0)
    if bad.size:
        raise ConfigError(f"width w must be nonzero; got w = 0 (row {bad[0]})")
    return params


def initial_condition(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``u0 = a exp(-x^2 / (2 w^2))`` for each row (a, w) of ``params``: [n, len(x)] float64.

    Evaluated in GPLaSDI's operation order, ``a * exp(-x**2 / 2 / w / w)``.
    """
    params = _check_params(params)
    a = params[:, 0, None]
    w = params[:, 1, None]
    x = np.asarray(x, dtype=np.float64)[None, :]
    return a * np.exp(-(x**2) / 2 / w / w)


# --------------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------------


def _residual(un: np.ndarray, v: np.ndarray, v_left: np.ndarray, c: float) -> np.ndarray:
    """``r_i = -u^n_i + v_i + c (v_i^2 - v_i v_{i-1})`` on [N, B] (GPLaSDI's operation order).

    ``v_left`` is ``v_{i-1}`` (periodic), i.e. ``np.roll(v, 1, axis=0)``.
    """
    return -un + v + c * (v**2 - v * v_left)


def _recurrence(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``p_i = beta_i + alpha_i p_{i-1}`` with ``p_{-1} = 0`` along axis 0 of [N, B].

    Blocks of ``_BLOCK`` rows: each block runs the recurrence from zero (all blocks at once), the
    block ends are chained (one step per block), then each row adds its block's incoming value
    times the cumulative product of ``alpha`` inside the block. Column b only ever touches column b.
    """
    n, batch = beta.shape
    n_blocks = -(-n // _BLOCK)
    pad = n_blocks * _BLOCK - n
    if pad:
        alpha = np.concatenate([alpha, np.zeros((pad, batch))])
        beta = np.concatenate([beta, np.zeros((pad, batch))])
    a = alpha.reshape(n_blocks, _BLOCK, batch)
    b = beta.reshape(n_blocks, _BLOCK, batch)
    y = np.empty_like(b)
    y[:, 0] = b[:, 0]
    for j in range(1, _BLOCK):
        np.multiply(a[:, j], y[:, j - 1], out=y[:, j])
        y[:, j] += b[:, j]
    if n_blocks > 1:
        prods = np.cumprod(a[1:], axis=1)
        incoming = np.empty((n_blocks - 1, batch))
        incoming[0] = y[0, -1]
        for k in range(1, n_blocks - 1):
            incoming[k] = y[k, -1] + prods[k - 1, -1] * incoming[k - 1]
        y[1:] += prods * incoming[:, None, :]
    return y.reshape(n_blocks * _BLOCK, batch)[:n]


def _newton_update(v: np.ndarray, v_left: np.ndarray, r: np.ndarray, c: float) -> np.ndarray:
    """The Newton correction ``d`` solving ``J(v) d = -r`` exactly, for [N, B] columns.

    ``J`` has diagonal ``1 + c (2 v_i - v_{i-1})``, ``J[i, i-1] = -c v_i`` and the corner
    ``J[0, N-1] = -c v_0`` (GPLaSDI's ``jacobian``); ``v_left = np.roll(v, 1, axis=0)``.
    """
    diag = 1.0 + c * (2 * v - v_left)
    alpha = (c * v) / diag
    p = _recurrence(alpha, -r / diag)
    q = np.cumprod(alpha, axis=0)
    last = p[-1] / (1.0 - q[-1])
    return p + q * last


def _column_norms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(x * x, axis=0))


def _backward_euler_step(
    un: np.ndarray, c: float, max_newton: int, tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step for the columns of ``un`` [N, B]: ``(u_new, iterations [B], converged [B])``.

    Each column runs GPLaSDI's loop on its own: update, recompute the residual, test; a column
    leaves the loop at its first passed test and is not touched again. Where the test never
    passes, ``u_new`` holds the last iterate.
    """
    batch = un.shape[1]
    iterations = np.zeros(batch, dtype=np.int64)
    converged = np.zeros(batch, dtype=bool)
    un_norm = _column_norms(un)
    work = np.arange(batch)  # the columns still iterating
    un_work = un
    v = un
    v_left = np.roll(v, 1, axis=0)
    r = _residual(un, v, v_left, c)
    u_new = None
    for k in range(max_newton):
        v = v + _newton_update(v, v_left, r, c)
        v_left = np.roll(v, 1, axis=0)
        r = _residual(un_work, v, v_left, c)
        passed = _column_norms(r) / un_norm[work] < tol
        iterations[work] = k + 1
        converged[work[passed]] = True
        if passed.all() and work.size == batch:
            return v, iterations, converged  # every column passed at the same iteration
        if u_new is None:
            u_new = np.empty_like(un)
        u_new[:, work[passed]] = v[:, passed]
        keep = ~passed
        work = work[keep]
        if not work.size:
            return u_new, iterations, converged
        v, v_left, r = v[:, keep], v_left[:, keep], r[:, keep]
        un_work = un[:, work]
    u_new[:, work] = v
    return u_new, iterations, converged


@dataclass(frozen=True)
class NewtonReport:
    """Newton statistics of a run.

    Attributes
    ----------
    iterations : [B, nt - 1] Newton iterations taken at each step (0 after a failure).
    failed_step : [B] the first step ``n`` (level ``n + 1``) whose Newton test never passed; -1
        where every step converged.
    """

    iterations: np.ndarray
    failed_step: np.ndarray


def integrate(
    u0: np.ndarray,
    settings: BurgersSettings,
    *,
    progress: Callable[[int], object] | None = None,
) -> tuple[np.ndarray, NewtonReport]:
    """Run the scheme from ``u0`` [B, nx] (float64): ``(snapshots [B, nt, nx], report)``.

    Where Newton fails at step n, levels n + 1 onwards stay 0 (GPLaSDI's behaviour) whatever
    ``settings.on_failure`` says; :func:`solve` turns failures into a warning or an error.
    ``progress(1)`` is called after every step.
    """
    u0 = np.asarray(u0, dtype=np.float64)
    if u0.ndim != 2 or u0.shape[1] != settings.nx:
        raise ValueError(f"u0 must have shape [B, {settings.nx}], got {u0.shape}")
    batch, n = u0.shape[0], settings.nx - 1
    c = settings.courant
    out = np.zeros((batch, settings.nt, settings.nx))
    out[:, 0] = u0
    iterations = np.zeros((batch, settings.nt - 1), dtype=np.int64)
    failed_step = np.full(batch, -1, dtype=np.int64)
    un = np.ascontiguousarray(u0[:, :n].T)
    alive = np.arange(batch)  # the parameters whose every step so far converged
    # Diverging iterates may overflow; they fail the test (NaN < tol is False) like GPLaSDI's.
    with np.errstate(all="ignore"):
        for step in range(settings.nt - 1):
            if alive.size:
                u, its, ok = _backward_euler_step(un, c, settings.max_newton, settings.tol)
                iterations[alive, step] = its
                if not ok.all():
                    failed_step[alive[~ok]] = step
                    alive, u = alive[ok], u[:, ok]
                un = u
                out[alive, step + 1, :n] = u.T
                out[alive, step + 1, n] = u[0]
            if progress is not None:
                progress(1)
    return out, NewtonReport(iterations=iterations, failed_step=failed_step)


# --------------------------------------------------------------------------------------------
# Batches and the public solver
# --------------------------------------------------------------------------------------------


def _failure_message(params: np.ndarray, failed_step: np.ndarray, settings: BurgersSettings) -> str:
    bad = np.flatnonzero(failed_step >= 0)
    first = ", ".join(
        f"(a={params[i, 0]:.6g}, w={params[i, 1]:.6g}) at time level {failed_step[i] + 1} "
        f"(t={(failed_step[i] + 1) * settings.dt:.6g})"
        for i in bad[:3]
    )
    more = f" and {bad.size - 3} more" if bad.size > 3 else ""
    return (
        f"Newton did not reach ||r||/||u^n|| < {settings.tol:g} in {settings.max_newton} "
        f"iterations for {bad.size} parameter(s): {first}{more}"
    )


def _solve_batches(
    params: np.ndarray, settings: BurgersSettings, *, batch_size: int | None, progress: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(indices, snapshots [len(indices), nt, nx])`` batch by batch.

    Non-convergence raises (``on_failure="raise"``) or warns once per batch (``"gplasdi_zeros"``).
    """
    size = _BATCH if batch_size is None else batch_size
    if size < 1:
        raise ConfigError(f"batch_size must be positive, got {size}")
    n_mu = params.shape[0]
    n_batches = -(-n_mu // size)
    size = -(-n_mu // n_batches)
    x = settings.grid()
    bar = tqdm(
        total=n_batches * (settings.nt - 1),
        desc=f"burgers1d {settings.nx}x{settings.nt}",
        unit="step",
        disable=not progress,
        leave=False,
    )
    with bar:
        for start in range(0, n_mu, size):
            idx = np.arange(start, min(start + size, n_mu))
            snaps, report = integrate(
                initial_condition(params[idx], x), settings, progress=bar.update
            )
            if np.any(report.failed_step >= 0):
                message = _failure_message(params[idx], report.failed_step, settings)
                if settings.on_failure == "raise":
                    raise NewtonConvergenceError(
                        f'{message}; on_failure = "gplasdi_zeros" keeps GPLaSDI\'s zero levels '
                        "instead, or raise max_newton"
                    )
                warnings.warn(
                    message + "; as GPLaSDI, the later levels are 0",
                    NewtonConvergenceWarning,
                    stacklevel=2,
                )
            yield idx, snaps


def _settings(**kwargs: Any) -> BurgersSettings:
    unknown = set(kwargs) - set(BurgersSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown solver settings {sorted(unknown)}")
    return BurgersSettings(**kwargs)


def solve(
    params: np.ndarray,
    *,
    batch_size: int | None = None,
    progress: bool = True,
    **settings: Any,
) -> SnapshotSet:
    """Solve for every row (a, w) of ``params`` [n_mu, 2] and return the snapshots in memory.

    ``settings`` are :class:`BurgersSettings` fields (nx, nt, x_min, x_max, t_max, max_newton,
    tol, on_failure); ``batch_size`` parameters run together (default 16); ``progress`` shows a
    tqdm bar. Memory: ``n_mu * nt * nx * 8`` bytes (8 MB per parameter at the default grid); use
    :func:`generate_snapshot_file` for large sets.

    Returns
    -------
    SnapshotSet with ``snapshots`` [n_mu, nt, nx], ``times`` [nt], coords ``x`` [nx],
    ``param_names`` ("a", "w") and ``settings`` (:meth:`BurgersSettings.to_dict`).
    """
    params = _check_params(params)
    config = _settings(**settings)
    snapshots = np.empty((params.shape[0], config.nt, config.nx))
    for idx, snaps in _solve_batches(params, config, batch_size=batch_size, progress=progress):
        snapshots[idx] = snaps
    return SnapshotSet(
        params=params,
        times=config.times(),
        snapshots=snapshots,
        param_names=PARAM_NAMES,
        coords={"x": config.grid()},
        settings=config.to_dict(),
    )


def generate_snapshot_file(
    path: str | os.PathLike[str],
    *,
    params: np.ndarray,
    overwrite: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
    **settings: Any,
) -> Path:
    """Generate the snapshot set for ``params`` into the HDF5 file ``path`` (cached, resumable).

    Reuses a complete file with the same settings and parameters, refuses one with others unless
    ``overwrite`` (see :func:`mlasdi.data.generate_cached`); finished batches go to
    ``path + '.partial'`` and a rerun skips them. Only one batch of snapshots is in memory at a
    time. ``settings`` as in :func:`solve`.
    """
    params = _check_params(params)
    config = _settings(**settings)
    layout = dict(
        params=params,
        times=config.times(),
        grid_shape=(config.nx,),
        param_names=PARAM_NAMES,
        coords={"x": config.grid()},
        settings=config.to_dict(),
    )

    def solve_todo(todo: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return _solve_batches(params[todo], config, batch_size=batch_size, progress=progress)

    return generate_cached(path, layout, solve_todo, overwrite=overwrite)


def load_or_generate(path: str | os.PathLike[str], **kwargs: Any) -> SnapshotSet:
    """:func:`generate_snapshot_file` (a no-op when the cached file matches), then load it."""
    return load_snapshot_set(generate_snapshot_file(path, **kwargs))


@dataclass(frozen=True)
class Burgers1DData(GeneratedGrid):
    """``problem = "burgers1d"``: this solver at ``nx`` nodes x ``nt`` time levels on a ``grid`` =
    [n_a, n_w] grid over a in [0.7, 0.9], w in [0.9, 1.1]; trained on the four corners unless
    ``train_params`` / ``train_index`` / ``train_stride`` say otherwise
    (:class:`~mlasdi.problems.source.GeneratedGrid`). The file (``file``, default
    ``data/burgers1d_<nx>x<nt>_<n_a>x<n_w>.h5``) is generated and cached. ``on_failure``: what
    a Newton failure does (:class:`BurgersSettings`): ``"raise"`` stops the generation,
    ``"gplasdi_zeros"`` keeps GPLaSDI's zero levels.
    """

    problem: ClassVar[str] = "burgers1d"
    param_names: ClassVar[tuple[str, ...]] = PARAM_NAMES

    grid: tuple[int, ...] = (21, 21)
    train_stride: float | tuple[float, ...] = 0.2
    nx: int = 1001
    nt: int = 1001
    on_failure: str = "raise"

    @property
    def n_state(self) -> int:
        return self.nx

    @property
    def n_raw_times(self) -> int:
        return self.nt

    def parameters(self) -> np.ndarray:
        return parameter_grid(*self.grid)

    def _settings(self) -> BurgersSettings:
        try:
            return BurgersSettings(nx=self.nx, nt=self.nt, on_failure=self.on_failure)
        except ValueError as exc:
            raise ConfigError(f"data: {exc}") from None

    def stored_settings(self) -> dict[str, Any]:
        return self._settings().to_dict()

    def default_file(self) -> str:
        return f"burgers1d_{self.nx}x{self.nt}_{self.grid[0]}x{self.grid[1]}.h5"

    def check(self) -> None:
        int_key(self.nx, "nx", 4)
        int_key(self.nt, "nt", 3)
        self._settings()
        super().check()

    def generate_file(self, path: Path, *, progress: bool) -> None:
        generate_snapshot_file(
            path,
            params=self.parameters(),
            progress=progress,
            nx=self.nx,
            nt=self.nt,
            on_failure=self.on_failure,
        )

    def smoke(self) -> Burgers1DData:
        """101 x 101 (the same dt/dx) on a 3 x 3 grid, every 10th snapshot (or coarser), trained
        on the four corners."""
        return replace(
            self,
            nx=101,
            nt=101,
            grid=(3, 3),
            time_stride=max(self.time_stride, 10),
            file="",
            train_index=(),
            train_params=(),
            train_stride=(0.2,),
        )
