"""Linear latent dynamics dz/dt = A z + b: derivatives, least-squares fit, exact integration.

Shapes: a batch of latent trajectories is ``Z`` [n_mu, n_t, r]. Coefficients are stored as
``Xi`` [n_mu, r + 1, r] so that ``dZ/dt ~ [1, Z] @ Xi`` (the SINDy library [1, z]); hence
``b = Xi[:, 0, :]`` and ``A = Xi[:, 1:, :]^T``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

# Finite-difference stencils on a uniform grid, as (interior offsets/weights, boundary rows).
# Boundary rows are one-sided stencils of the same order; the last rows are the first ones
# mirrored with opposite sign.
_STENCILS: dict[str, tuple[dict[int, float], list[dict[int, float]], float]] = {
    "forward1": ({0: -1.0, 1: 1.0}, [], 1.0),
    "central2": ({-1: -1.0, 1: 1.0}, [{0: -3.0, 1: 4.0, 2: -1.0}], 2.0),
    "central4": (
        {-2: 1.0, -1: -8.0, 1: 8.0, 2: -1.0},
        [
            {0: -25.0, 1: 48.0, 2: -36.0, 3: 16.0, 4: -3.0},
            {-1: -3.0, 0: -10.0, 1: 18.0, 2: -6.0, 3: 1.0},
        ],
        12.0,
    ),
    # GPLaSDI's default (LLNL/GPLaSDI src/lasdi/fd.py, SBP12): the summation-by-parts operator of
    # interior order 2 and boundary order 1, i.e. central differences inside and a forward
    # (backward) difference in the first (last) row.
    "sbp12": ({-1: -0.5, 1: 0.5}, [{0: -1.0, 1: 1.0}], 1.0),
}
_ORDER = {"forward1": 1, "central2": 2, "central4": 4, "sbp12": 2}


def derivative_matrix(n_t: int, dt: float, scheme: str = "central4") -> torch.Tensor:
    """Dense [n_t, n_t] float64 operator D with (D @ z)[i] ~ dz/dt(t_i) on a uniform grid.

    ``forward1`` is first order (the last row is a backward difference); ``central2`` and
    ``central4`` are second and fourth order everywhere, with one-sided stencils at the ends;
    ``sbp12`` (GPLaSDI's default) is second order inside and first order in the first and last
    rows (a forward and a backward difference).
    """
    if scheme not in _STENCILS:
        raise ValueError(
            f"unknown finite-difference scheme {scheme!r}; choose from {sorted(_STENCILS)}"
        )
    interior, boundary, denominator = _STENCILS[scheme]
    needed = _ORDER[scheme] + 1
    if n_t < needed:
        raise ValueError(f"scheme {scheme!r} needs at least {needed} time points, got {n_t}")
    D = torch.zeros(n_t, n_t, dtype=torch.float64)
    n_bound = len(boundary)
    for i in range(n_bound, n_t - n_bound):
        for offset, weight in interior.items():
            j = i + offset
            if 0 <= j < n_t:
                D[i, j] = weight
    if scheme == "forward1":
        D[n_t - 1, n_t - 2], D[n_t - 1, n_t - 1] = -1.0, 1.0
    for i, row in enumerate(boundary):
        for offset, weight in row.items():
            D[i, i + offset] = weight
            D[n_t - 1 - i, n_t - 1 - i - offset] = -weight
    return D / (denominator * dt)


@functools.lru_cache(maxsize=32)
def _cached_derivative_matrix(
    n_t: int, dt: float, scheme: str, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    return derivative_matrix(n_t, dt, scheme).to(dtype=dtype, device=device)


def _along_time(M: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """M [n_t, n_t] applied along axis -2 of Z [..., n_t, r]."""
    # One [n_t, n_t] x [n_t, batch * r] GEMM instead of a batched product that repeats M.
    n_t = Z.shape[-2]
    columns = Z.movedim(-2, 0).reshape(n_t, -1)
    return (M @ columns).reshape(n_t, *Z.shape[:-2], Z.shape[-1]).movedim(0, -2)


def time_derivative(Z: torch.Tensor, dt: float, scheme: str = "central4") -> torch.Tensor:
    """dZ/dt along axis -2 of ``Z`` [..., n_t, r] (differentiable; stays on Z's device)."""
    D = _cached_derivative_matrix(Z.shape[-2], float(dt), scheme, Z.dtype, Z.device)
    return _along_time(D, Z)


def time_derivative_adjoint(G: torch.Tensor, dt: float, scheme: str = "central4") -> torch.Tensor:
    """The transpose of :func:`time_derivative`: the gradient of sum(G * time_derivative(Z))
    with respect to Z, for G [..., n_t, r]."""
    D = _cached_derivative_matrix(G.shape[-2], float(dt), scheme, G.dtype, G.device)
    return _along_time(D.T, G)


def library(Z: torch.Tensor) -> torch.Tensor:
    """[..., n_t, r] -> [..., n_t, r + 1]: the affine library [1, z]."""
    return torch.cat([torch.ones_like(Z[..., :1]), Z], dim=-1)


def fit_affine(Z: torch.Tensor, dZdt: torch.Tensor) -> torch.Tensor:
    """Least-squares ``Xi`` [..., r + 1, r] minimising ||[1, Z] Xi - dZ/dt||_F per batch entry.

    Solved by a reduced QR of the library (differentiable, batched, no host round trip); the
    library must have full column rank (n_t >= r + 1 and non-degenerate trajectories).
    """
    return _least_squares(library(Z), dZdt)[0]


def _least_squares(Theta: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Xi, R): the least-squares solution of Theta Xi ~ Y and the R factor of Theta = QR."""
    Q, R = torch.linalg.qr(Theta, mode="reduced")
    return torch.linalg.solve_triangular(R, Q.mT @ Y, upper=True), R


def _affine_fit_forward(
    Z: torch.Tensor, dZdt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """(dynamics, coefficients, what :func:`_affine_fit_backward` needs)."""
    Theta = library(Z)
    Xi, R = _least_squares(Theta, dZdt)
    E = Theta @ Xi - dZdt
    norms = torch.linalg.matrix_norm(Xi)
    return (E * E).sum() / E.numel(), norms.mean(), (Theta, R, Xi, E, norms)


def _affine_fit_backward(
    saved: Sequence[torch.Tensor], grad_dynamics: torch.Tensor, grad_coefficients: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dZ, dL/d(dZdt)) given dL/d(dynamics) and dL/d(coefficients), in closed form."""
    Theta, R, Xi, E, norms = saved
    # Dynamics term: Xi minimises it, so its derivative through Xi vanishes (envelope
    # theorem) and only the explicit dependence on Theta and dZ/dt remains.
    grad_E = E * (grad_dynamics * 2.0 / E.numel())
    grad_Theta = grad_E @ Xi.mT
    grad_dZdt = -grad_E
    # Coefficient term: G = d mean||Xi||_F / dXi pulled back through Xi = (Theta^T Theta)^-1
    # Theta^T dZ/dt. With w = (Theta^T Theta)^-1 G = R^-1 R^-T G:
    # dY = Theta w and dTheta = -E w^T - Theta w Xi^T. A zero Xi gets the zero subgradient.
    scale = torch.where(norms > 0, grad_coefficients / (norms.numel() * norms), 0.0)
    G = Xi * scale[..., None, None]
    w = torch.linalg.solve_triangular(
        R, torch.linalg.solve_triangular(R.mT, G, upper=False), upper=True
    )
    Theta_w = Theta @ w
    grad_Theta = grad_Theta - E @ w.mT - Theta_w @ Xi.mT
    grad_dZdt = grad_dZdt + Theta_w
    return grad_Theta[..., 1:], grad_dZdt


class _AffineFitLosses(torch.autograd.Function):
    """(dynamics, coefficients) of :func:`affine_fit_losses` with a closed-form backward."""

    @staticmethod
    def forward(ctx, Z, dZdt):  # type: ignore[override]
        dynamics, coefficients, saved = _affine_fit_forward(Z, dZdt)
        ctx.save_for_backward(*saved)
        return dynamics, coefficients

    @staticmethod
    def backward(ctx, grad_dynamics, grad_coefficients):  # type: ignore[override]
        return _affine_fit_backward(ctx.saved_tensors, grad_dynamics, grad_coefficients)


def affine_fit_losses(Z: torch.Tensor, dZdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stage-1 dynamics and coefficient losses of the least-squares affine fit.

    With ``Xi`` = :func:`fit_affine` (Z, dZdt): ``dynamics`` = mean((Z_lib Xi - dZ/dt)^2) over all
    entries and ``coefficients`` = mean over the batch of ||Xi_i||_F. Equal to computing them
    from :func:`fit_affine` by autograd, but the gradient is written in closed form: about half the
    cost, since it never differentiates through the QR factorisation.
    """
    return _AffineFitLosses.apply(Z, dZdt)


def latent_penalty_gradient(
    Z: torch.Tensor,
    dt: float,
    scheme: str,
    weight_dynamics: torch.Tensor,
    weight_coefficients: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dynamics, coefficients, dP/dZ) for P = weight_dynamics * dynamics + weight_coefficients
    * coefficients, the losses of :func:`affine_fit_losses` (Z, :func:`time_derivative` (Z)).

    The same numbers as autograd through those two functions, computed without building a graph:
    the training loop calls this every iteration and autograd's bookkeeping cost as much as the
    arithmetic on these small tensors. The weights are 0-dim tensors on Z's device (so that no
    host-to-device copy is made per call).
    """
    dZdt = time_derivative(Z, dt, scheme)
    dynamics, coefficients, saved = _affine_fit_forward(Z, dZdt)
    grad_Z, grad_dZdt = _affine_fit_backward(saved, weight_dynamics, weight_coefficients)
    return dynamics, coefficients, grad_Z + time_derivative_adjoint(grad_dZdt, dt, scheme)


def split_coefficients(Xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Xi`` [..., r + 1, r] -> (A [..., r, r], b [..., r])."""
    return Xi[..., 1:, :].mT, Xi[..., 0, :]


def integrate_expm(
    A: torch.Tensor, b: torch.Tensor, z0: torch.Tensor, times: torch.Tensor
) -> torch.Tensor:
    """Exact solution of dz/dt = A z + b, z(times[0]) = z0, at every time.

    Uses the matrix exponential of the augmented system [[A, b], [0, 0]] for all parameters and
    times at once, in float64. Shapes: A [n, r, r], b [n, r], z0 [n, r], times [n_t] ->
    [n, n_t, r] in z0's dtype.
    """
    n, r = z0.shape
    dtype = z0.dtype
    M = torch.zeros(n, r + 1, r + 1, dtype=torch.float64, device=z0.device)
    M[:, :r, :r] = A.to(torch.float64)
    M[:, :r, r] = b.to(torch.float64)
    tau = (times.to(torch.float64) - times[0].to(torch.float64)).to(z0.device)
    propagators = torch.linalg.matrix_exp(M[:, None] * tau[None, :, None, None])
    z0_aug = torch.cat(
        [z0.to(torch.float64), torch.ones(n, 1, dtype=torch.float64, device=z0.device)], 1
    )
    Z = torch.einsum("ntij,nj->nti", propagators[:, :, :r, :], z0_aug)
    return Z.to(dtype)


def integrate_expm_uniform(
    A: torch.Tensor, b: torch.Tensor, z0: torch.Tensor, n_t: int, dt: float
) -> torch.Tensor:
    """Exact solution of dz/dt = A z + b, z(0) = z0, at the uniform times k dt, k < ``n_t``.

    The same solution as :func:`integrate_expm` on a uniform grid, from one matrix exponential
    per parameter instead of one per parameter and time (about 16 us each on a CPU core: a
    sampling round of 441 parameters x 20 samples x 1001 times would spend 140 s in them).
    With the one-step propagator P = exp(M dt) of the augmented system, z(k dt) = P^i Q^j z0 for
    k = j B + i, Q = P^B and B ~ sqrt(n_t): about 2 sqrt(n_t) products, so the round-off grows
    like 2 sqrt(n_t) eps (float64), not n_t eps. Shapes as :func:`integrate_expm`:
    A [n, r, r], b [n, r], z0 [n, r] -> [n, n_t, r] in z0's dtype.
    """
    n, r = z0.shape
    M = torch.zeros(n, r + 1, r + 1, dtype=torch.float64, device=z0.device)
    M[:, :r, :r] = A.to(torch.float64)
    M[:, :r, r] = b.to(torch.float64)
    P = torch.linalg.matrix_exp(M * dt)
    block = max(1, math.isqrt(n_t - 1) + 1)
    powers = [torch.eye(r + 1, dtype=torch.float64, device=z0.device).expand(n, -1, -1)]
    for _ in range(block - 1):
        powers.append(powers[-1] @ P)
    Q = powers[-1] @ P
    y = torch.cat(
        [z0.to(torch.float64), torch.ones(n, 1, dtype=torch.float64, device=z0.device)], 1
    )
    anchors = [y]
    for _ in range(-(-n_t // block) - 1):
        anchors.append(torch.einsum("nij,nj->ni", Q, anchors[-1]))
    # Z[n, j, i] = P^i y_j for the j-th anchor y_j = Q^j z0: time j * block + i.
    Z = torch.einsum("nirs,njs->njir", torch.stack(powers, 1)[:, :, :r, :], torch.stack(anchors, 1))
    return Z.reshape(n, -1, r)[:, :n_t].to(z0.dtype)


def integrate_rk4(
    A: torch.Tensor,
    b: torch.Tensor,
    z0: torch.Tensor,
    times: torch.Tensor,
    substeps: int = 1,
) -> torch.Tensor:
    """Classical RK4 for dz/dt = A z + b on ``times`` (uniform), ``substeps`` steps per interval.

    Shapes as :func:`integrate_expm`; computed in z0's dtype.
    """
    A, b = A.to(z0.dtype), b.to(z0.dtype)
    h = (times[1] - times[0]).item() / substeps
    out = [z0]
    z = z0

    def rhs(state: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nij,nj->ni", A, state) + b

    for _ in range(times.numel() - 1):
        for _ in range(substeps):
            k1 = rhs(z)
            k2 = rhs(z + 0.5 * h * k1)
            k3 = rhs(z + 0.5 * h * k2)
            k4 = rhs(z + h * k3)
            z = z + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(z)
    return torch.stack(out, dim=1)


def integrate(
    A: torch.Tensor,
    b: torch.Tensor,
    z0: torch.Tensor,
    times: torch.Tensor,
    *,
    method: str = "expm",
    rk4_substeps: int = 1,
) -> torch.Tensor:
    """Integrate dz/dt = A z + b with ``method`` ``expm`` (exact) or ``rk4``."""
    if method == "expm":
        return integrate_expm(A, b, z0, times)
    if method == "rk4":
        return integrate_rk4(A, b, z0, times, rk4_substeps)
    raise ValueError(f"unknown integrator {method!r}; choose 'expm' or 'rk4'")
