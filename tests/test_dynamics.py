"""Latent dynamics against exact answers: FD operators, least squares, integrators (float64)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from mlasdi.dynamics import (
    affine_fit_losses,
    derivative_matrix,
    fit_affine,
    integrate,
    integrate_expm,
    integrate_expm_uniform,
    integrate_rk4,
    latent_penalty_gradient,
    split_coefficients,
    time_derivative,
    time_derivative_adjoint,
)

ORDERS = {"forward1": 1, "central2": 2, "central4": 4}


def _random_affine(n: int, r: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of stable A [n, r, r] (eigenvalues in the left half plane), b [n, r], z0 [n, r]."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, r, r))
    S = rng.standard_normal((n, r, r))
    # -(M M^T + 0.2 I) is negative definite; adding a skew part keeps Re(eig) < 0 and adds rotation.
    A = -(M @ M.transpose(0, 2, 1)) / r - 0.2 * np.eye(r) + (S - S.transpose(0, 2, 1))
    b = rng.standard_normal((n, r))
    z0 = rng.standard_normal((n, r))
    return A, b, z0


def _expm_solution(A: np.ndarray, b: np.ndarray, z0: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Z [n, n_t, r] from scipy's expm of the augmented matrix [[A, b], [0, 0]], per time."""
    n, r = z0.shape
    out = np.empty((n, times.size, r))
    for i in range(n):
        M = np.zeros((r + 1, r + 1))
        M[:r, :r], M[:r, r] = A[i], b[i]
        for j, t in enumerate(times - times[0]):
            out[i, j] = (scipy.linalg.expm(M * t) @ np.append(z0[i], 1.0))[:r]
    return out


# --- derivative_matrix --------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", sorted(ORDERS))
def test_derivative_matrix_exact_on_polynomials_up_to_its_order(scheme):
    order = ORDERS[scheme]
    n_t, dt, t0 = 17, 0.1, 0.3
    t = t0 + dt * np.arange(n_t)
    D = derivative_matrix(n_t, dt, scheme).numpy()
    assert D.shape == (n_t, n_t) and D.dtype == np.float64
    for degree in range(order + 1):
        exact = degree * t ** (degree - 1) if degree else np.zeros_like(t)
        # Round-off only: |D| ~ 1/dt times values up to t^degree ~ 2^4.
        np.testing.assert_allclose(D @ t**degree, exact, rtol=0, atol=1e-10, err_msg=f"t^{degree}")
    # ... and not exact one degree higher (the order claim is tight).
    degree = order + 1
    assert np.abs(D @ t**degree - degree * t ** (degree - 1)).max() > 1e-6


@pytest.mark.parametrize("scheme", sorted(ORDERS))
def test_derivative_matrix_converges_at_its_order_on_sine(scheme):
    # Max error over every row (boundary rows included) on sin(t), t in [0, 2], dt halving.
    errors = []
    for n_t in (21, 41, 81):
        t = np.linspace(0.0, 2.0, n_t)
        D = derivative_matrix(n_t, float(t[1] - t[0]), scheme).numpy()
        errors.append(np.abs(D @ np.sin(t) - np.cos(t)).max())
    observed = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    np.testing.assert_allclose(observed, ORDERS[scheme], atol=0.3)


def test_derivative_matrix_rejects_unknown_scheme_and_short_grids():
    with pytest.raises(ValueError, match="unknown finite-difference scheme 'central6'"):
        derivative_matrix(10, 0.1, "central6")
    with pytest.raises(ValueError, match="needs at least 5 time points"):
        derivative_matrix(4, 0.1, "central4")


def test_time_derivative_applies_the_operator_along_time_axis():
    # Z [2, 9, 3] (float32 and float64) -> D @ Z per batch entry, dtype kept.
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((2, 9, 3))
    D = derivative_matrix(9, 0.25, "central2").numpy()
    for dtype in (torch.float64, torch.float32):
        out = time_derivative(torch.as_tensor(Z, dtype=dtype), 0.25, "central2")
        assert out.dtype == dtype
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        np.testing.assert_allclose(out.numpy(), D @ Z, rtol=tol, atol=tol)


# --- least squares -------------------------------------------------------------------------------


def test_fit_affine_recovers_A_and_b_from_exact_derivatives():
    # Seed 11: 4 parameters, r = 3, 41 times on [0, 2].
    A, b, z0 = _random_affine(4, 3, seed=11)
    times = np.linspace(0.0, 2.0, 41)
    Z = _expm_solution(A, b, z0, times)
    dZdt = np.einsum("nij,ntj->nti", A, Z) + b[:, None, :]
    Xi = fit_affine(torch.as_tensor(Z), torch.as_tensor(dZdt))
    assert Xi.shape == (4, 4, 3) and Xi.dtype == torch.float64
    A_fit, b_fit = split_coefficients(Xi)
    np.testing.assert_allclose(A_fit.numpy(), A, rtol=0, atol=1e-10)
    np.testing.assert_allclose(b_fit.numpy(), b, rtol=0, atol=1e-10)


def test_fit_affine_with_central4_derivatives_converges_at_fourth_order():
    # Seed 12: 3 parameters, r = 2; coefficient error with FD derivatives on 41, 81, 161 times.
    A, b, z0 = _random_affine(3, 2, seed=12)
    errors = []
    for n_t in (41, 81, 161):
        times = np.linspace(0.0, 2.0, n_t)
        Z = torch.as_tensor(_expm_solution(A, b, z0, times))
        Xi = fit_affine(Z, time_derivative(Z, float(times[1] - times[0]), "central4"))
        A_fit, b_fit = split_coefficients(Xi)
        errors.append(max(np.abs(A_fit.numpy() - A).max(), np.abs(b_fit.numpy() - b).max()))
    assert errors[-1] < 1e-7
    observed = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    # At least fourth order. Pre-asymptotically it is a little faster (measured 4.53, 4.48): the
    # one-sided boundary rows, whose error constant is larger, weigh less as n_t grows.
    assert np.all((observed > 3.7) & (observed < 5.0)), observed


def test_split_coefficients():
    # Seed 13. Xi [n, r+1, r] with b = Xi[:, 0] and A = Xi[:, 1:]^T.
    rng = np.random.default_rng(13)
    Xi = torch.as_tensor(rng.standard_normal((5, 4, 3)))
    A, b = split_coefficients(Xi)
    assert A.shape == (5, 3, 3) and b.shape == (5, 3)
    torch.testing.assert_close(b, Xi[:, 0, :], rtol=0, atol=0)
    torch.testing.assert_close(A, Xi[:, 1:, :].transpose(1, 2), rtol=0, atol=0)


def test_fit_affine_gradients_pass_gradcheck():
    # Seed 14: Z [2, 6, 2], dZdt [2, 6, 2], float64.
    rng = np.random.default_rng(14)
    Z = torch.as_tensor(rng.standard_normal((2, 6, 2)), dtype=torch.float64).requires_grad_()
    dZdt = torch.as_tensor(rng.standard_normal((2, 6, 2)), dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(fit_affine, (Z, dZdt), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_affine_fit_losses_pass_gradcheck():
    # Seed 15: Z [3, 7, 2], dZdt [3, 7, 2], float64; both outputs checked.
    rng = np.random.default_rng(15)
    Z = torch.as_tensor(rng.standard_normal((3, 7, 2)), dtype=torch.float64).requires_grad_()
    dZdt = torch.as_tensor(rng.standard_normal((3, 7, 2)), dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(affine_fit_losses, (Z, dZdt), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_affine_fit_losses_equal_autograd_through_qr_on_stage1_shapes(latent_losses_through_qr):
    # Seed 16: two trajectories of 201 steps in a 10-dimensional latent space, their central4
    # derivatives, float64; values and the gradient of 0.1 dynamics + 1e-3 coefficients agree
    # with differentiating the QR solve to 1e-10 relative.
    rng = np.random.default_rng(16)
    Z0 = torch.as_tensor(rng.standard_normal((2, 201, 10)).cumsum(axis=1) * 0.1)
    results = []
    for losses in (affine_fit_losses, latent_losses_through_qr):
        Z = Z0.clone().requires_grad_()
        dynamics, coefficients = losses(Z, time_derivative(Z, 0.01, "central4"))
        (0.1 * dynamics + 1e-3 * coefficients).backward()
        results.append((dynamics.detach(), coefficients.detach(), Z.grad))
    for ours, reference in zip(*results, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10 * reference.abs().max())


def test_affine_fit_losses_zero_coefficients_get_zero_subgradient():
    # dZ/dt = 0 gives Xi = 0 exactly: the coefficient norm's gradient is 0, not NaN.
    Z = torch.as_tensor(np.random.default_rng(17).standard_normal((1, 6, 2))).requires_grad_()
    dZdt = torch.zeros(1, 6, 2, dtype=torch.float64, requires_grad=True)
    dynamics, coefficients = affine_fit_losses(Z, dZdt)
    coefficients.backward()
    assert dynamics.detach().item() == 0.0 and coefficients.detach().item() == 0.0
    assert torch.equal(Z.grad, torch.zeros_like(Z))
    assert torch.equal(dZdt.grad, torch.zeros_like(dZdt))


@pytest.mark.parametrize("scheme", sorted(ORDERS))
def test_time_derivative_adjoint_is_the_transpose(scheme):
    # Seed 18: Z, G [3, 9, 2], float64: <G, D Z> = <D^T G, Z> to 1e-12 relative, and the adjoint
    # is autograd's gradient of <G, time_derivative(Z)> to 1e-14.
    rng = np.random.default_rng(18)
    Z = torch.as_tensor(rng.standard_normal((3, 9, 2))).requires_grad_()
    G = torch.as_tensor(rng.standard_normal((3, 9, 2)))
    pairing = (G * time_derivative(Z, 0.3, scheme)).sum()
    (autograd,) = torch.autograd.grad(pairing, Z)
    adjoint = time_derivative_adjoint(G, 0.3, scheme)
    np.testing.assert_allclose((adjoint * Z).sum().item(), pairing.item(), rtol=1e-12)
    torch.testing.assert_close(adjoint, autograd, rtol=1e-14, atol=1e-14)
    if scheme == "central4":  # both default to it
        assert torch.equal(time_derivative_adjoint(G, 0.3), adjoint)
        assert torch.equal(time_derivative(Z, 0.3), time_derivative(Z, 0.3, scheme))


@pytest.mark.parametrize("scheme", ["central4", "central2"])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_latent_penalty_gradient_equals_autograd_through_qr(
    dtype, rtol, scheme, latent_losses_through_qr
):
    # Seed 19: stage-1 shapes (two trajectories of 201 steps in 10 latent dimensions, central4
    # and central2, beta1 0.1, beta2 1e-3). The training loop's graph-free, closed-form gradient against an
    # independent formulation in float64: the dense derivative operator applied by einsum, the
    # coefficients by a QR least-squares fit, the gradient by autograd through both. Measured:
    # 0 and 5e-16 relative in float64, 2e-7 and 6e-7 in float32.
    rng = np.random.default_rng(19)
    Z = torch.as_tensor(rng.standard_normal((2, 201, 10)).cumsum(axis=1) * 0.1)
    weights = [torch.tensor(w, dtype=dtype) for w in (0.1, 1e-3)]
    dynamics, coefficients, grad = latent_penalty_gradient(Z.to(dtype), 0.03, scheme, *weights)
    Z_autograd = Z.clone().requires_grad_()
    dZdt = torch.einsum("ij,njr->nir", derivative_matrix(201, 0.03, scheme), Z_autograd)
    expected = latent_losses_through_qr(Z_autograd, dZdt)
    (0.1 * expected[0] + 1e-3 * expected[1]).backward()
    for ours, theirs in ((dynamics, expected[0]), (coefficients, expected[1])):
        assert ours.dtype == dtype
        torch.testing.assert_close(ours.double(), theirs.detach(), rtol=rtol, atol=0)
    assert grad.dtype == dtype
    torch.testing.assert_close(
        grad.double(), Z_autograd.grad, rtol=0, atol=rtol * float(Z_autograd.grad.abs().max())
    )


# --- integrators ---------------------------------------------------------------------------------


def test_integrate_expm_matches_scipy_expm():
    # Seed 21: 5 parameters, r = 3, 11 times on [0.5, 3] (a nonzero start time).
    A, b, z0 = _random_affine(5, 3, seed=21)
    times = np.linspace(0.5, 3.0, 11)
    expected = _expm_solution(A, b, z0, times)
    Z = integrate_expm(*map(torch.as_tensor, (A, b, z0, times)))
    assert Z.shape == (5, 11, 3) and Z.dtype == torch.float64
    np.testing.assert_allclose(Z.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(Z[:, 0].numpy(), z0)


def test_integrate_expm_returns_z0_dtype():
    # float64 coefficients with a float32 initial state: computed in float64, returned float32.
    A, b, z0 = _random_affine(2, 3, seed=22)
    times = np.linspace(0.0, 1.0, 5)
    Z = integrate_expm(
        torch.as_tensor(A), torch.as_tensor(b), torch.as_tensor(z0, dtype=torch.float32),
        torch.as_tensor(times),
    )  # fmt: skip
    assert Z.dtype == torch.float32
    expected = _expm_solution(A, b, z0.astype(np.float32).astype(np.float64), times)
    np.testing.assert_allclose(Z.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_integrate_rk4_matches_expm_and_converges_at_fourth_order():
    # Seed 23: 4 parameters, r = 3, 21 times on [0, 2]; error vs the exact solution, substeps 1, 2, 4.
    A, b, z0 = _random_affine(4, 3, seed=23)
    times = np.linspace(0.0, 2.0, 21)
    exact = _expm_solution(A, b, z0, times)
    args = [torch.as_tensor(a) for a in (A, b, z0, times)]
    errors = [np.abs(integrate_rk4(*args, substeps=s).numpy() - exact).max() for s in (1, 2, 4)]
    assert errors[0] < 1e-3
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    np.testing.assert_allclose(np.log2(ratios), 4.0, atol=0.3)  # ~16x per halving of the step
    Z = integrate(*args, method="rk4", rk4_substeps=4)
    np.testing.assert_array_equal(Z.numpy(), integrate_rk4(*args, substeps=4).numpy())


def test_integrate_rk4_takes_one_step_per_interval_by_default():
    # One classical RK4 step of z' = a z multiplies z by the degree-4 Taylor polynomial of
    # exp(a h): diagonal A = diag(-1, 0.5, -3), b = 0, h = 0.25, 5 times (float64, to 1e-14).
    a = torch.tensor([-1.0, 0.5, -3.0], dtype=torch.float64)
    z0 = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    times = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    Z = integrate_rk4(torch.diag(a)[None], torch.zeros(1, 3, dtype=torch.float64), z0, times)
    x = a * 0.25
    growth = 1 + x + x**2 / 2 + x**3 / 6 + x**4 / 24
    expected = z0[:, None, :] * growth ** torch.arange(5, dtype=torch.float64)[:, None]
    torch.testing.assert_close(Z, expected, rtol=1e-14, atol=0)
    Z = integrate(
        torch.diag(a)[None], torch.zeros(1, 3, dtype=torch.float64), z0, times, method="rk4"
    )
    torch.testing.assert_close(Z, expected, rtol=1e-14, atol=0)


def test_integrators_compute_on_the_device_of_the_initial_state():
    # The ROM keeps the snapshot times on the host and z0 = enc(u0) on the training device. A
    # "meta" tensor stands for that device: an operation mixing it with a host tensor fails as
    # it would on a GPU, so every intermediate must be made on z0's device.
    A, b, z0 = (torch.ones(2, 3, 3), torch.ones(2, 3), torch.ones(2, 3))
    A, b, z0 = (t.to("meta") for t in (A, b, z0))
    times = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    for Z in (
        integrate(A, b, z0, times),
        integrate(A, b, z0, times, method="rk4"),
        integrate_expm_uniform(A, b, z0, 5, 0.25),
    ):
        assert Z.device.type == "meta" and Z.shape == (2, 5, 3) and Z.dtype == torch.float32


def test_integrate_rk4_accepts_float64_coefficients_with_float32_state():
    # The ROM passes GP coefficients in float64 and z0 = enc(u0) in the model dtype (float32);
    # integrate_expm accepts that mix and integrate_rk4 promises to compute "in z0's dtype".
    A, b, z0 = _random_affine(2, 3, seed=24)
    times = np.linspace(0.0, 1.0, 6)
    Z = integrate_rk4(
        torch.as_tensor(A), torch.as_tensor(b), torch.as_tensor(z0, dtype=torch.float32),
        torch.as_tensor(times), substeps=4,
    )  # fmt: skip
    assert Z.dtype == torch.float32
    expected = _expm_solution(A, b, z0.astype(np.float32).astype(np.float64), times)
    np.testing.assert_allclose(Z.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_integrate_dispatches_and_rejects_unknown_methods():
    A, b, z0 = _random_affine(2, 2, seed=25)
    args = [torch.as_tensor(a) for a in (A, b, z0, np.linspace(0.0, 1.0, 4))]
    np.testing.assert_array_equal(integrate(*args).numpy(), integrate_expm(*args).numpy())
    with pytest.raises(ValueError, match="unknown integrator 'euler'"):
        integrate(*args, method="euler")
