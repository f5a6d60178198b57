"""1D-1V Vlasov-Poisson two-stream problem: a batched full-order solver that reproduces HyPar.

Problem (x in [0, 2 pi) periodic, v in [-7, 7), t in (0, 5])::

    u_t + (v u)_x + (E u)_v = 0,      dE/dx = rho - mean_x(rho),      rho = sum_j u_ij dv,
    u(x, v, 0; T, k) = 8 / sqrt(2 pi T) (1 + 0.1 cos(k x)) [exp(-(v-2)^2/(2T)) + exp(-(v+2)^2/(2T))]

The scheme is the one HyPar (Ghosh et al.) runs for this case, reproduced operation by operation:

* finite-difference nodes ``x_i = 2 pi i / N_x`` and ``v_j = -7 + 14 j / N_v``
  (so ``v_{N_v/2} = 0``);
* classical RK4 (``dt = 0.005``, 1000 steps, a snapshot every 4 steps: 251 snapshots at
  ``t = 0.02 n``); E is recomputed from every stage value;
* E from the spectral solve of ``rho - mean(rho)``: ``E_hat_m = -i rho_hat_m / m`` with ``m`` the
  integer bin number (``numpy.fft.fftfreq(N) * N``), ``E_hat_0 = 0``. The x-period is therefore
  2 pi: ``cos(k x)`` with ``k != 1`` has a jump at ``x = 0``, exactly as in the paper's data;
* conservative finite differences with WENO5-JS (``eps = 1e-6``, ``p = 2``, linear weights
  0.1/0.6/0.3) applied separately to the point flux ``c u`` and to ``u``, left- and right-biased,
  3 ghost points;
* HyPar's interface rule: with the wave speeds of the two points beside an interface and of their
  transverse neighbours all positive, take the left-biased flux; all negative, the right-biased one;
  otherwise local Lax-Friedrichs ``(f_L + f_R - max|c| (u_R - u_L)) / 2``;
* HyPar never fills the field's ghost values at the x-ends (they stay 0), so the v-interfaces in the
  columns ``i = 0`` and ``i = N_x - 1`` always take the Lax-Friedrichs branch. That is the default;
  ``periodic_field=True`` fills them periodically (the clean scheme);
* homogeneous Dirichlet ghost values ``u = 0`` at the v-boundaries (mass leaves through them late in
  the run; that is the reference behaviour).

Layout: a batch of parameters is one float64 tensor ``u: [batch, N_x, N_v]``; snapshot sets are
``[n_mu, n_t, N_x, N_v]`` (axis order t, x, v after the parameter axis). The state vector used by
the ROMs is :func:`mlasdi.data.flatten_grid` of that, x fastest: ``vec = U[n].T.reshape(-1)``
(HyPar's and the paper's order).

Speed: the right-hand side is one fused kernel (``torch.compile``) per batch shape. Along x the
sign of the wave speed ``v`` is known per column, so away from ``v = 0`` only one biased
reconstruction of the flux is computed (the upwind stencil is selected per column); the few
Lax-Friedrichs columns get all four. Along v the sign of E changes every stage: each row gets the
reconstruction oriented by the sign of E, and the rows that need Lax-Friedrichs get all four --
on CPU through a gather of a bounded number of rows per parameter (with an exact dense fallback
when more rows need it), on GPU densely (no data-dependent shapes, no host synchronisation).
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from mlasdi.config import ConfigError
from mlasdi.data import SnapshotSet, generate_cached, load_snapshot_set
from mlasdi.problems.source import GeneratedGrid, bool_key, int_key
from mlasdi.rom import resolve_device

__all__ = [
    "PARAM_NAMES",
    "VlasovData",
    "VlasovSettings",
    "electric_field",
    "generate_snapshot_file",
    "initial_condition",
    "load_or_generate",
    "parameter_grid",
    "phase_space_grid",
    "solve",
    "training_indices",
]

PARAM_NAMES = ("T", "k")
X_LENGTH = 2.0 * math.pi
V_MIN, V_MAX = -7.0, 7.0
SOLVER_VERSION = 1

# WENO5-JS constants, computed exactly as HyPar computes them (same doubles).
_ONE_SIXTH = 1.0 / 6.0
_THIRTEEN_BY_TWELVE = 13.0 / 12.0
_ONE_FOURTH = 1.0 / 4.0
_WENO_EPS = 1e-6
_WENO_C1, _WENO_C2, _WENO_C3 = 0.1, 0.6, 0.3
_GHOSTS = 3

# Auto batch sizing: CPU batches stay cache-sized (measured fastest at ~64 x 64 x 64 cells), and
# the snapshot buffer of a batch is bounded by this many bytes (plus a fraction of free memory).
_CPU_CELLS_PER_BATCH = 64 * 64 * 64
_BATCH_BYTES_CPU = 1 << 30
# Compile the right-hand side when a run has at least this many cell-steps (below it, eager wins
# against the ~20-40 s compile time).
_COMPILE_MIN_CELL_STEPS = 3e7


@dataclass(frozen=True)
class VlasovSettings:
    """Every setting that changes the numbers (stored with a snapshot file; a cache key).

    Attributes
    ----------
    nx, nv : grid points in x and v (even, >= 8).
    dt : time step.
    n_steps : number of RK4 steps (final time ``n_steps * dt``).
    save_every : steps between snapshots (must divide ``n_steps``).
    periodic_field : fill the field's x ghost values periodically (HyPar leaves them 0).
    perturbation : amplitude of ``cos(k x)`` in the initial condition.
    """

    nx: int = 64
    nv: int = 64
    dt: float = 0.005
    n_steps: int = 1000
    save_every: int = 4
    periodic_field: bool = False
    perturbation: float = 0.1

    def __post_init__(self) -> None:
        for name in ("nx", "nv"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
                raise ConfigError(f"{name} must be an integer, got {n!r}")
            if n < 8 or n % 2:
                raise ConfigError(
                    f"{name} must be even and >= 8 (WENO5 needs a 5-point stencil), got {n}"
                )
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise ConfigError(f"dt must be positive, got {self.dt}")
        if self.n_steps < 2 or self.save_every < 1 or self.n_steps % self.save_every:
            raise ConfigError(
                f"n_steps ({self.n_steps}) must be a multiple of save_every ({self.save_every}) "
                "with at least 2 snapshots after t = 0"
            )
        if self.n_steps // self.save_every < 2:
            raise ConfigError("at least 3 snapshots (including t = 0) are needed")
        if not math.isfinite(self.perturbation):
            raise ConfigError(f"perturbation must be finite, got {self.perturbation}")

    @property
    def n_times(self) -> int:
        return self.n_steps // self.save_every + 1

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable settings stored in a snapshot file (with the fixed scheme)."""
        out: dict[str, Any] = {"problem": "vlasov1d1v_two_stream", "solver_version": SOLVER_VERSION}
        out.update(
            {k: (v if not isinstance(v, np.integer) else int(v)) for k, v in asdict(self).items()}
        )
        out.update(
            {
                "x_range": [0.0, X_LENGTH],
                "v_range": [V_MIN, V_MAX],
                "time_integrator": "rk4",
                "spatial_scheme": "weno5-js",
                "weno_eps": _WENO_EPS,
                "weno_p": 2,
                "interface_flux": "hypar-upwind-llf",
                "v_boundary": "dirichlet-0",
                "field_solver": "fft",
                "layout": "snapshots[mu, t, x, v]; state vector x fastest: U[n].T.reshape(-1)",
            }
        )
        return out


# --------------------------------------------------------------------------------------------
# Parameters, grid and initial condition
# --------------------------------------------------------------------------------------------


def parameter_grid(
    n_T: int = 21,
    n_k: int = 21,
    T_range: tuple[float, float] = (0.9, 1.1),
    k_range: tuple[float, float] = (1.0, 1.2),
) -> np.ndarray:
    """The uniform parameter grid, [n_T * n_k, 2] with columns (T, k).

    Order: T-major (T is the outer loop, k the inner one): row ``i * n_k + j`` is ``(T_i, k_j)``.
    The default is the paper's 21 x 21 grid with step 0.01.
    """
    if n_T < 1 or n_k < 1:
        raise ConfigError(f"grid sizes must be positive, got {n_T} x {n_k}")
    T = np.linspace(T_range[0], T_range[1], n_T)
    k = np.linspace(k_range[0], k_range[1], n_k)
    TT, KK = np.meshgrid(T, k, indexing="ij")
    return np.stack([TT.ravel(), KK.ravel()], axis=1)


def training_indices(
    params: np.ndarray,
    stride: float = 0.05,
    *,
    T_range: tuple[float, float] = (0.9, 1.1),
    k_range: tuple[float, float] = (1.0, 1.2),
    atol: float = 1e-8,
) -> np.ndarray:
    """Indices into ``params`` [n, 2] of the training sub-grid ``{start, ..., end}^2``, step stride.

    The default is the paper's 5 x 5 training set. Matching is to ``atol`` (robust to round-off);
    every sub-grid point must be present in ``params``.
    """
    params = np.asarray(params, dtype=np.float64)
    if params.ndim != 2 or params.shape[1] != 2:
        raise ValueError(f"params must have shape [n, 2], got {params.shape}")
    axes = []
    for lo, hi in (T_range, k_range):
        n = int(round((hi - lo) / stride))
        if n < 0 or abs(lo + n * stride - hi) > atol:
            raise ValueError(f"stride {stride} does not divide the range [{lo}, {hi}]")
        axes.append(lo + stride * np.arange(n + 1))
    TT, KK = np.meshgrid(*axes, indexing="ij")
    targets = np.stack([TT.ravel(), KK.ravel()], axis=1)
    close = np.all(np.abs(targets[:, None, :] - params[None, :, :]) <= atol, axis=2)
    missing = ~close.any(axis=1)
    if missing.any():
        raise ValueError(f"training points {targets[missing][:3].tolist()} are not in params")
    return close.argmax(axis=1)


def phase_space_grid(nx: int = 64, nv: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """HyPar's nodes: ``x_i = 2 pi i / nx`` (i < nx), ``v_j = -7 + 14 j / nv`` (j < nv)."""
    x = X_LENGTH * np.arange(nx) / nx
    v = V_MIN + (V_MAX - V_MIN) * np.arange(nv) / nv
    return x, v


def _check_params(params: np.ndarray) -> np.ndarray:
    params = np.atleast_2d(np.asarray(params, dtype=np.float64))
    if params.ndim != 2 or params.shape[1] != 2 or params.shape[0] == 0:
        raise ConfigError(f"params must have shape [n, 2] with columns (T, k), got {params.shape}")
    if not np.all(np.isfinite(params)):
        raise ConfigError("params must be finite")
    bad = np.flatnonzero(params[:, 0] <= 0)
    if bad.size:
        raise ConfigError(
            f"temperature T must be positive; got T = {params[bad[0], 0]} (row {bad[0]})"
        )
    return params


def initial_condition(
    params: np.ndarray, x: np.ndarray, v: np.ndarray, perturbation: float = 0.1
) -> np.ndarray:
    """The two-stream initial condition u(x, v, 0; T, k), [n, N_x, N_v] float64.

    ``u = 8 / sqrt(2 pi T) (1 + perturbation cos(k x)) [exp(-(v-2)^2/(2T)) + exp(-(v+2)^2/(2T))]``
    for each row (T, k) of ``params`` [n, 2].
    """
    params = _check_params(params)
    T = params[:, 0, None, None]
    k = params[:, 1, None, None]
    x = np.asarray(x, dtype=np.float64)[None, :, None]
    v = np.asarray(v, dtype=np.float64)[None, None, :]
    maxwell = np.exp(-((v - 2.0) ** 2) / (2.0 * T)) + np.exp(-((v + 2.0) ** 2) / (2.0 * T))
    return 8.0 / np.sqrt(2.0 * np.pi * T) * (1.0 + perturbation * np.cos(k * x)) * maxwell


# --------------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------------


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    # ``python_float / tensor`` is evaluated by torch as ``reciprocal(tensor) * python_float``,
    # which rounds differently from HyPar's ``c / x``; a 0-d tensor numerator gives a true division.
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def weno5(
    m3: torch.Tensor, m2: torch.Tensor, m1: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor
) -> torch.Tensor:
    """WENO5-JS interface value from a 5-point stencil ordered from far upwind to far downwind.

    For the left-biased value at ``j+1/2`` pass ``(f_{j-2}, f_{j-1}, f_j, f_{j+1}, f_{j+2})``; for
    the right-biased one at ``j-1/2`` pass ``(f_{j+2}, f_{j+1}, f_j, f_{j-1}, f_{j-2})``.
    Jiang & Shu (1996) weights with eps = 1e-6, p = 2; the arithmetic follows HyPar's operation
    order.
    """
    d1 = m3 - 2 * m2 + m1
    e1 = m3 - 4 * m2 + 3 * m1
    b1 = _THIRTEEN_BY_TWELVE * d1 * d1 + _ONE_FOURTH * e1 * e1
    a1 = _scalar(_WENO_C1, b1) / ((b1 + _WENO_EPS) * (b1 + _WENO_EPS))
    d2 = m2 - 2 * m1 + p1
    e2 = m2 - p1
    b2 = _THIRTEEN_BY_TWELVE * d2 * d2 + _ONE_FOURTH * e2 * e2
    a2 = _scalar(_WENO_C2, b2) / ((b2 + _WENO_EPS) * (b2 + _WENO_EPS))
    d3 = m1 - 2 * p1 + p2
    e3 = 3 * m1 - 4 * p1 + p2
    b3 = _THIRTEEN_BY_TWELVE * d3 * d3 + _ONE_FOURTH * e3 * e3
    a3 = _scalar(_WENO_C3, b3) / ((b3 + _WENO_EPS) * (b3 + _WENO_EPS))
    a_sum_inv = 1.0 / (a1 + a2 + a3)
    w1 = a1 * a_sum_inv
    w2 = a2 * a_sum_inv
    w3 = a3 * a_sum_inv
    f1 = (2 * _ONE_SIXTH) * m3 + (-7 * _ONE_SIXTH) * m2 + (11 * _ONE_SIXTH) * m1
    f2 = (-_ONE_SIXTH) * m2 + (5 * _ONE_SIXTH) * m1 + (2 * _ONE_SIXTH) * p1
    f3 = (2 * _ONE_SIXTH) * m1 + (5 * _ONE_SIXTH) * p1 + (-_ONE_SIXTH) * p2
    return w1 * f1 + w2 * f2 + w3 * f3


def _stencils(padded: torch.Tensor, dim: int, n: int) -> tuple[list, list]:
    """Left- and right-biased 5-point stencils at the n+1 interfaces of a 3-ghost padded axis."""
    left = [padded.narrow(dim, s, n + 1) for s in range(5)]
    right = [padded.narrow(dim, 5 - s, n + 1) for s in range(5)]
    return left, right


def _lax_friedrichs(
    f_left: list, f_right: list, u_left: list, u_right: list, alpha: torch.Tensor | float
) -> torch.Tensor:
    fL, fR = weno5(*f_left), weno5(*f_right)
    uL, uR = weno5(*u_left), weno5(*u_right)
    return 0.5 * (fL + fR - alpha * (uR - uL))


def _field_matrix(nx: int) -> np.ndarray:
    """[nx, nx] real matrix of HyPar's spectral field solve: E = K @ (rho - mean(rho)).

    Column j is the field of a unit charge at node j: ``E_hat_m = -i rho_hat_m / m`` with ``m`` the
    integer bin number (``numpy.fft.fftfreq(nx) * nx``, Nyquist bin ``m = -nx/2``), ``E_hat_0 = 0``.
    """
    m = np.fft.fftfreq(nx) * nx
    coef = np.zeros(nx, dtype=np.complex128)
    coef[1:] = -1j / m[1:]
    return np.real(np.fft.ifft(np.fft.fft(np.eye(nx), axis=0) * coef[:, None], axis=0))


@functools.lru_cache(maxsize=16)
def _field_matrix_tensor(nx: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # One per size, dtype and device: a float64 solve must never use a float32 matrix (its
    # fields would drift by ~1e-8), nor a float32 solve silently promote to float64.
    return torch.as_tensor(_field_matrix(nx), dtype=dtype, device=device)


def electric_field(u: torch.Tensor, dv: float) -> torch.Tensor:
    """E [batch, N_x] from u [batch, N_x, N_v]: ``dE/dx = rho - mean(rho)``, 2 pi-periodic in x.

    ``rho_i = sum_j u_ij dv``; ``E_hat_m = -i rho_hat_m / m`` with ``m`` the integer bin number
    (Nyquist bin ``m = -N/2``), ``E_hat_0 = 0`` (HyPar's spectral solve). The transform pair is
    applied as its exact real matrix (:func:`_field_matrix`) with an elementwise product and a sum:
    unlike a batched FFT, that rounds every batch row the same way whatever the batch size, so batch
    results equal one-by-one results bit for bit; it agrees with an FFT to round-off.
    """
    nx = u.shape[-2]
    rho = (u / (1.0 / dv)).sum(dim=-1)
    rho = rho - rho.sum(dim=-1, keepdim=True) / nx
    return (rho[:, None, :] * _field_matrix_tensor(nx, u.dtype, u.device)).sum(dim=-1)


class _RightHandSide:
    """du/dt for a batch, HyPar's scheme; also returns the v-boundary fluxes (mass bookkeeping).

    ``__call__(u, E) -> (du_dt [B, N_x, N_v], G_low [B, N_x], G_high [B, N_x], n_mixed)`` where
    ``G_low`` and ``G_high`` are the numerical fluxes through the v-interfaces ``j = -1/2`` and
    ``N_v - 1/2``.

    Along v the Lax-Friedrichs rows (E changes sign around them, and with HyPar's field ghosts the
    first and last row) need four reconstructions, the others one. With ``lf_rows=None`` all rows
    get four (no data-dependent work: the GPU path). With ``lf_rows=K`` only K rows per parameter
    are gathered for them (a static shape, so it compiles once); ``n_mixed`` (0-d tensor) is then
    the largest number of such rows in the batch, and the result is exact only if
    ``n_mixed <= K`` -- the caller must check and fall back to ``lf_rows=None`` otherwise.
    """

    def __init__(
        self,
        nx: int,
        nv: int,
        periodic_field: bool,
        device: torch.device,
        lf_rows: int | None = None,
    ) -> None:
        self.nx, self.nv = nx, nv
        self.lf_rows = None if lf_rows is None or lf_rows >= nx else int(lf_rows)
        self.periodic_field = periodic_field
        dx = X_LENGTH / nx
        dv = (V_MAX - V_MIN) / nv
        self.dxinv = 1.0 / dx
        self.dvinv = 1.0 / dv
        self.dv = dv
        _, v = phase_space_grid(nx, nv)
        # HyPar extrapolates ghost coordinates linearly, so v_{-1} < 0 < v_{N_v}.
        v_ext = np.concatenate([[v[0] - dv], v, [v[-1] + dv]])
        trip = np.stack([v_ext[:-2], v_ext[1:-1], v_ext[2:]])
        positive = np.all(trip > 0, axis=0)
        negative = np.all(trip < 0, axis=0)
        mixed = np.flatnonzero(~positive & ~negative)
        if mixed.size == 0 or np.any(np.diff(mixed) != 1):
            raise AssertionError(
                "Lax-Friedrichs columns of the v grid must be one contiguous block"
            )
        self.lf_lo, self.lf_hi = int(mixed[0]), int(mixed[-1]) + 1
        self.v = torch.tensor(v, dtype=torch.float64, device=device)
        self.v_positive = torch.tensor(positive, device=device)
        self.alpha_x = torch.tensor(
            np.abs(trip).max(axis=0)[self.lf_lo : self.lf_hi], dtype=torch.float64, device=device
        )

    def __call__(
        self, u: torch.Tensor, E: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nx, nv = self.nx, self.nv
        # ---- x: F = v u, periodic ghosts; upwind stencil chosen per v column.
        up = torch.cat([u[:, -_GHOSTS:], u, u[:, :_GHOSTS]], dim=1)
        f = up * self.v
        f_left, f_right = _stencils(f, 1, nx)
        upwind = [torch.where(self.v_positive, a, b) for a, b in zip(f_left, f_right, strict=True)]
        flux_x = weno5(*upwind)
        lo, hi = self.lf_lo, self.lf_hi
        u_left, u_right = _stencils(up[..., lo:hi], 1, nx)
        flux_lf = _lax_friedrichs(
            [s[..., lo:hi] for s in f_left],
            [s[..., lo:hi] for s in f_right],
            u_left,
            u_right,
            self.alpha_x,
        )
        flux_x = torch.cat([flux_x[..., :lo], flux_lf, flux_x[..., hi:]], dim=-1)
        hyp = self.dxinv * (flux_x[:, 1:] - flux_x[:, :-1])
        # ---- v: G = E u, zero (Dirichlet) ghosts; the rule is decided per x row from E.
        # (cat, not F.pad: inductor folds a pad into every masked load and then cannot share the
        # stencil subexpressions, which made the fused kernel ~10x slower)
        zeros = u.new_zeros(u.shape[0], nx, _GHOSTS)
        uv = torch.cat([zeros, u, zeros], dim=2)
        g = uv * E[..., None]
        g_left, g_right = _stencils(g, 2, nv)
        if self.periodic_field:
            e_ext = torch.cat([E[:, -1:], E, E[:, :1]], dim=1)
        else:  # HyPar: the field's ghost values are never filled and stay 0
            zero = E.new_zeros(E.shape[0], 1)
            e_ext = torch.cat([zero, E, zero], dim=1)
        e_m, e_0, e_p = e_ext[:, :-2], e_ext[:, 1:-1], e_ext[:, 2:]
        positive = (e_m > 0) & (e_0 > 0) & (e_p > 0)
        negative = (e_m < 0) & (e_0 < 0) & (e_p < 0)
        mixed = ~(positive | negative)
        alpha = torch.maximum(torch.maximum(e_0.abs(), e_m.abs()), e_p.abs())
        # upwind rows: one reconstruction with the stencil oriented by the sign of E
        oriented = [
            torch.where(positive[..., None], a, b) for a, b in zip(g_left, g_right, strict=True)
        ]
        flux_v = weno5(*oriented)
        if self.lf_rows is None:  # every row gets the four reconstructions
            u_left, u_right = _stencils(uv, 2, nv)
            lf = _lax_friedrichs(g_left, g_right, u_left, u_right, alpha[..., None])
            flux_v = torch.where(mixed[..., None], lf, flux_v)
            n_mixed = None
        else:  # only the first lf_rows rows of each parameter with mixed signs (index order)
            rows = torch.argsort((~mixed).to(torch.uint8), dim=1, stable=True)[:, : self.lf_rows]
            take = rows[..., None].expand(-1, -1, nv + 2 * _GHOSTS)
            g_rows_left, g_rows_right = _stencils(torch.gather(g, 1, take), 2, nv)
            u_rows_left, u_rows_right = _stencils(torch.gather(uv, 1, take), 2, nv)
            lf = _lax_friedrichs(
                g_rows_left,
                g_rows_right,
                u_rows_left,
                u_rows_right,
                torch.gather(alpha, 1, rows)[..., None],
            )
            put = rows[..., None].expand(-1, -1, nv + 1)
            keep = torch.gather(flux_v, 1, put)
            lf = torch.where(torch.gather(mixed, 1, rows)[..., None], lf, keep)
            flux_v = flux_v.scatter(1, put, lf)
            n_mixed = mixed.sum(dim=1).max()
        hyp = hyp + self.dvinv * (flux_v[..., 1:] - flux_v[..., :-1])
        return -hyp, flux_v[..., 0], flux_v[..., -1], n_mixed


class _Stepper:
    """RK4 (HyPar's stage and update order) around a right-hand side, optionally compiled."""

    def __init__(self, settings: VlasovSettings, device: torch.device, compile: bool) -> None:
        self.settings = settings
        nx, nv, periodic = settings.nx, settings.nv, settings.periodic_field
        # On CPU compute the four-reconstruction Lax-Friedrichs flux only on a bounded number of
        # rows per parameter (measured: at most ~2 per zero of E plus the 2 end rows); on GPU,
        # where compute is cheap and a host sync is not, on every row.
        lf_rows = None if device.type == "cuda" else nx // 4 + 4
        self.rhs_eager = _RightHandSide(nx, nv, periodic, device, lf_rows=lf_rows)
        self.dense_eager = _RightHandSide(nx, nv, periodic, device, lf_rows=None)
        self.compile = compile
        self.rhs = self._compiled(self.rhs_eager) if compile else self.rhs_eager
        self._dense: Callable | None = None
        self.fallbacks = 0
        dt = settings.dt
        # HyPar: U_s = u + (dt a_s,s-1) k_{s-1}; u_new = u + (dt b_1) k_1 + ... + (dt b_4) k_4.
        self.stage_coeffs = (dt * 0.5, dt * 0.5, dt * 1.0)
        self.weights = (dt * (1.0 / 6.0), dt * (1.0 / 3.0), dt * (1.0 / 3.0), dt * (1.0 / 6.0))
        self.dv = self.rhs_eager.dv

    @staticmethod
    def _compiled(rhs: _RightHandSide) -> Callable:
        return torch.compile(rhs, dynamic=False, fullgraph=True)

    def _rhs(
        self, u: torch.Tensor, E: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k, g_lo, g_hi, n_mixed = self.rhs(u, E)
        if n_mixed is not None and int(n_mixed) > self.rhs_eager.lf_rows:  # CPU only: no sync cost
            self.fallbacks += 1
            if self._dense is None:
                self._dense = self._compiled(self.dense_eager) if self.compile else self.dense_eager
            k, g_lo, g_hi, _ = self._dense(u, E)
        return k, g_lo, g_hi

    def step(self, u: torch.Tensor, boundary_flux: bool = False) -> tuple[torch.Tensor, Any]:
        """One RK4 step; with ``boundary_flux`` also the mass that left through the v-boundaries.

        Returns ``(u_new, outflow)``; ``outflow`` [B] is ``dt sum_s b_s sum_i dx (G_high - G_low)``
        (None unless requested), so ``mass(u_new) = mass(u) - outflow`` up to round-off.
        """
        new = u.clone()
        stage = u
        outflow = None
        for s in range(4):
            k, g_lo, g_hi = self._rhs(stage, electric_field(stage, self.dv))
            new = new + k * self.weights[s]
            if boundary_flux:
                dx = X_LENGTH / self.settings.nx
                term = self.weights[s] * ((g_hi - g_lo).sum(dim=-1) * dx)
                outflow = term if outflow is None else outflow + term
            if s < 3:
                stage = u + k * self.stage_coeffs[s]
        return new, outflow

    def run(
        self, u0: torch.Tensor, out: torch.Tensor, progress: Callable[[int], object] | None = None
    ) -> None:
        """Integrate ``u0`` [B, N_x, N_v], writing the snapshots into ``out`` [B, n_t, N_x, N_v]."""
        out[:, 0] = u0
        u = u0
        save_every = self.settings.save_every
        for n in range(1, self.settings.n_steps + 1):
            u, _ = self.step(u)
            if n % save_every == 0:
                out[:, n // save_every] = u
            if progress is not None:
                progress(1)


# --------------------------------------------------------------------------------------------
# Batching, devices and the public solver
# --------------------------------------------------------------------------------------------


def _auto_batch_size(n_mu: int, settings: VlasovSettings, device: torch.device) -> int:
    """Parameters per batch: memory-bounded (snapshot buffer + working set), cache-sized on CPU."""
    cells = settings.nx * settings.nv
    padded = (settings.nx + 2 * _GHOSTS) * (settings.nv + 2 * _GHOSTS)
    # snapshot buffer + ~48 working arrays of the padded grid (RK stages, stencils, fluxes)
    bytes_per_param = 8 * (settings.n_times * cells + 48 * padded)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = 0.5 * free
        cap = n_mu
    else:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 4 * _BATCH_BYTES_CPU
        budget = min(_BATCH_BYTES_CPU, avail / 4)
        cap = max(1, _CPU_CELLS_PER_BATCH // cells)
    return int(max(1, min(cap, budget // bytes_per_param, n_mu)))


def _run_batch(
    stepper: _Stepper,
    params: np.ndarray,
    settings: VlasovSettings,
    device: torch.device,
    progress: Callable[[int], object] | None,
) -> np.ndarray:
    """Snapshots [len(params), n_t, N_x, N_v] (float64, host) for one batch."""
    x, v = phase_space_grid(settings.nx, settings.nv)
    u0 = torch.from_numpy(initial_condition(params, x, v, settings.perturbation)).to(device)
    out = torch.empty(
        (params.shape[0], settings.n_times, settings.nx, settings.nv),
        dtype=torch.float64,
        device=device,
    )
    with torch.no_grad():
        stepper.run(u0, out, progress)
    return out.cpu().numpy()


_WORKER_STEPPERS: dict[tuple, _Stepper] = {}


def _worker_init() -> None:
    # one thread per worker process: a process per core scales without OpenMP barriers, which
    # stall badly when the cores are shared with other work
    torch.set_num_threads(1)


def _worker_batch(params: np.ndarray, settings: VlasovSettings, compile: bool) -> np.ndarray:
    key = (settings, compile)
    if key not in _WORKER_STEPPERS:
        _WORKER_STEPPERS[key] = _Stepper(settings, torch.device("cpu"), compile)
    return _run_batch(_WORKER_STEPPERS[key], params, settings, torch.device("cpu"), None)


def _default_workers(device: torch.device, n_batches: int) -> int:
    if device.type != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, n_batches))


def _solve_batches(
    params: np.ndarray,
    settings: VlasovSettings,
    *,
    device: torch.device,
    batch_size: int | None,
    compile: bool | None,
    progress: bool,
    workers: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(indices, snapshots [len(indices), n_t, N_x, N_v])`` batch by batch (float64, host).

    Every batch has the same shape (the last is padded by repeating its last parameter), so a
    compiled right-hand side is built once (per worker). On CPU, compiled runs with several batches
    use one single-threaded worker process per core (``workers``; batches arrive in completion
    order); otherwise the batches run in this process.
    """
    n_mu = params.shape[0]
    if compile is None:
        work = n_mu * settings.nx * settings.nv * settings.n_steps
        compile = device.type == "cuda" or work >= _COMPILE_MIN_CELL_STEPS
    if workers is None:
        workers = 1
        if compile and batch_size is None:
            size = _auto_batch_size(n_mu, settings, device)
            workers = _default_workers(device, -(-n_mu // size))
    if workers > 1 and device.type != "cpu":
        raise ValueError("worker processes are for CPU runs only")
    size = batch_size if batch_size is not None else _auto_batch_size(n_mu, settings, device)
    if size < 1:
        raise ConfigError(f"batch_size must be positive, got {size}")
    if workers > 1 and batch_size is None:
        # keep the batches in flight (each worker's buffer, its pickled copy, the parent's copy)
        # within the memory budget: several batches per worker
        size = -(-size // 2)
    size = min(size, n_mu)
    n_batches = -(-n_mu // size)
    size = -(-n_mu // n_batches)  # equal batches: the last one needs the least padding
    batches = []
    for b in range(n_batches):
        idx = np.arange(b * size, min((b + 1) * size, n_mu))
        batches.append((idx, np.concatenate([idx, np.full(size - idx.size, idx[-1])])))
    desc = f"vlasov {settings.nx}x{settings.nv}"
    bar = tqdm(
        total=n_batches * settings.n_steps,
        desc=f"{desc} compiling (one-time)" if compile else desc,
        unit="step",
        disable=not progress,
        leave=False,
    )
    update = CompiledFirstUpdate(bar, desc) if compile else bar.update
    with bar:
        if workers <= 1:
            stepper = _Stepper(settings, device, compile)
            for idx, padded in batches:
                snaps = _run_batch(stepper, params[padded], settings, device, update)
                yield idx, _checked(snaps[: idx.size], idx)
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
            pending = {
                pool.submit(_worker_batch, params[padded], settings, compile): idx
                for idx, padded in batches
            }
            try:
                for future in as_completed(pending):
                    idx = pending.pop(future)
                    snaps = future.result()
                    update(settings.n_steps)
                    yield idx, _checked(snaps[: idx.size], idx)
            finally:
                for future in pending:
                    future.cancel()


class CompiledFirstUpdate:
    """``bar.update`` for a compiled solver: its first update includes the one-time compilation
    (30 s on a CPU), so the bar restarts its clock after it and the ETA counts from the second
    step on."""

    def __init__(self, bar: tqdm, desc: str) -> None:
        self.bar, self.desc, self.first = bar, desc, True

    def __call__(self, n: int) -> None:
        self.bar.update(n)
        if self.first:
            self.first = False
            done = self.bar.n
            self.bar.reset(total=self.bar.total)
            self.bar.initial = self.bar.n = self.bar.last_print_n = done
            self.bar.set_description(self.desc)


def _checked(snaps: np.ndarray, idx: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(snaps)):
        raise FloatingPointError(f"the solution became NaN/Inf for parameters {idx.tolist()}")
    return snaps


def _times(settings: VlasovSettings) -> np.ndarray:
    return np.arange(settings.n_times) * (settings.dt * settings.save_every)


def solve(
    params: np.ndarray,
    *,
    nx: int = 64,
    nv: int = 64,
    dt: float = 0.005,
    n_steps: int = 1000,
    save_every: int = 4,
    periodic_field: bool = False,
    perturbation: float = 0.1,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    compile: bool | None = None,
    workers: int | None = None,
) -> SnapshotSet:
    """Solve for every row (T, k) of ``params`` [n_mu, 2] and return the snapshots in memory.

    Parameters
    ----------
    params : [n_mu, 2] rows (T, k); T > 0.
    nx, nv, dt, n_steps, save_every, periodic_field, perturbation : see :class:`VlasovSettings`.
    device : ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    batch_size : parameters per batch (default: chosen from the memory and cache budget).
    progress : show a tqdm progress bar.
    compile : fuse the right-hand side with ``torch.compile`` (default: when the run is big enough
        to repay the compile time, and always on CUDA). Eager and compiled agree to round-off.
    workers : CPU worker processes, one thread each (default: one per core for compiled runs with
        several batches, else 1). Results do not depend on it.

    Returns
    -------
    SnapshotSet with ``snapshots`` [n_mu, n_t, nx, nv] (t, x, v), ``times`` [n_t], coords x and v,
    ``param_names`` ("T", "k") and ``settings`` (:meth:`VlasovSettings.to_dict`). Memory: the result
    holds ``n_mu * n_t * nx * nv * 8`` bytes (3.6 GB for 441 x 251 x 64 x 64); use
    :func:`generate_snapshot_file` to stream large sets to disk.
    """
    params = _check_params(params)
    settings = VlasovSettings(nx, nv, dt, n_steps, save_every, periodic_field, perturbation)
    dev = resolve_device(device)
    snapshots = np.empty((params.shape[0], settings.n_times, nx, nv), dtype=np.float64)
    for idx, snaps in _solve_batches(
        params,
        settings,
        device=dev,
        batch_size=batch_size,
        compile=compile,
        progress=progress,
        workers=workers,
    ):
        snapshots[idx] = snaps
    x, v = phase_space_grid(nx, nv)
    return SnapshotSet(
        params=params,
        times=_times(settings),
        snapshots=snapshots,
        param_names=PARAM_NAMES,
        coords={"x": x, "v": v},
        settings=settings.to_dict(),
    )


def generate_snapshot_file(
    path: str | os.PathLike[str],
    *,
    params: np.ndarray,
    nx: int = 64,
    nv: int = 64,
    periodic_field: bool = False,
    overwrite: bool = False,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    compile: bool | None = None,
    workers: int | None = None,
    **solver_settings: Any,
) -> Path:
    """Generate the snapshot set for ``params`` into the HDF5 file ``path`` (cached, resumable).

    * An existing complete file with the same settings and parameters is reused (returns at once).
    * An existing file with other settings or parameters is an error unless ``overwrite=True``
      (then it is replaced atomically once the new set is complete).
    * Each finished batch is written to ``path + '.partial'``; an interrupted run keeps those and a
      rerun with the same settings skips them. The final name appears only when every parameter is
      written.

    ``solver_settings`` are the remaining :class:`VlasovSettings` fields (dt, n_steps, save_every,
    perturbation); ``batch_size``, ``device``, ``compile`` and ``workers`` as in :func:`solve`. Layout: see the module docstring and :mod:`mlasdi.data`.
    """
    unknown = set(solver_settings) - {"dt", "n_steps", "save_every", "perturbation"}
    if unknown:
        raise TypeError(f"unknown solver settings {sorted(unknown)}")
    params = _check_params(params)
    settings = VlasovSettings(nx=nx, nv=nv, periodic_field=periodic_field, **solver_settings)
    dev = resolve_device(device)
    x, v = phase_space_grid(nx, nv)
    layout = dict(
        params=params,
        times=_times(settings),
        grid_shape=(nx, nv),
        param_names=PARAM_NAMES,
        coords={"x": x, "v": v},
        settings=settings.to_dict(),
    )

    def solve_todo(todo: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return _solve_batches(
            params[todo],
            settings,
            device=dev,
            batch_size=batch_size,
            compile=compile,
            progress=progress,
            workers=workers,
        )

    return generate_cached(path, layout, solve_todo, overwrite=overwrite)


def load_or_generate(path: str | os.PathLike[str], **kwargs: Any) -> SnapshotSet:
    """:func:`generate_snapshot_file` (a no-op when the cached file matches), then load it."""
    return load_snapshot_set(generate_snapshot_file(path, **kwargs))


# --------------------------------------------------------------------------------------------
# Data source (the ``[data]`` keys of ``problem = "vlasov"``)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VlasovData(GeneratedGrid):
    """``problem = "vlasov"``: this solver at ``nx`` x ``nv`` on a ``grid`` = [n_T, n_k] grid
    over T in [0.9, 1.1], k in [1.0, 1.2]; training points every ``train_stride`` (the paper's
    5 x 5), or ``train_index`` / ``train_params`` (:class:`~mlasdi.problems.source.GeneratedGrid`).
    The file (``file``, default ``data/vlasov_<nx>x<nv>_<n_T>x<n_k>.h5`` under the current
    directory) is generated and cached when ``generate`` is true.
    """

    problem: ClassVar[str] = "vlasov"
    param_names: ClassVar[tuple[str, ...]] = PARAM_NAMES

    nx: int = 64
    nv: int = 64
    grid: tuple[int, ...] = (21, 21)
    train_stride: float | tuple[float, ...] = 0.05
    periodic_field: bool = False

    @property
    def n_state(self) -> int:
        return self.nx * self.nv

    @property
    def n_raw_times(self) -> int:
        return VlasovSettings().n_times

    def parameters(self) -> np.ndarray:
        return parameter_grid(*self.grid)

    def _settings(self) -> VlasovSettings:
        try:
            return VlasovSettings(nx=self.nx, nv=self.nv, periodic_field=self.periodic_field)
        except ValueError as exc:
            raise ConfigError(f"data: {exc}") from None

    def stored_settings(self) -> dict[str, Any]:
        return self._settings().to_dict()

    def default_file(self) -> str:
        return f"vlasov_{self.nx}x{self.nv}_{self.grid[0]}x{self.grid[1]}.h5"

    def check(self) -> None:
        for key in ("nx", "nv"):
            int_key(getattr(self, key), key, 2)
        bool_key(self.periodic_field, "periodic_field")
        self._settings()
        super().check()

    def generate_file(self, path: Path, *, progress: bool) -> None:
        threads = torch.get_num_threads()
        # One thread: when the solver runs in this process (a single batch), OpenMP barriers stall
        # 30-45x on cores shared with other work (measured: 1.6 vs 45-77 steps/s at 32x32).
        torch.set_num_threads(1)
        try:
            generate_snapshot_file(
                path,
                params=self.parameters(),
                nx=self.nx,
                nv=self.nv,
                periodic_field=self.periodic_field,
                progress=progress,
            )
        finally:
            torch.set_num_threads(threads)

    def smoke(self) -> VlasovData:
        """16 x 16 on a 5 x 5 grid, every 10th snapshot (or coarser), the default cache file,
        trained by ``train_stride`` (explicit training points need not be on the smaller grid)."""
        return replace(
            self,
            nx=16,
            nv=16,
            grid=(5, 5),
            time_stride=max(self.time_stride, 10),
            file="",
            train_index=(),
            train_params=(),
        )
