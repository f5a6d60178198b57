"""Vlasov-Poisson full-order solver: exact answers, physics checks, the snapshot-file contract."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
from scipy.optimize import fsolve
from scipy.special import wofz

from mlasdi import cli
from mlasdi.data import DataError, load_snapshot_set
from mlasdi.problems import vlasov
from mlasdi.problems.vlasov import VlasovSettings

# Small, fast settings for everything that is not a physics check: 16 x 16, 8 steps, 3 snapshots.
TINY = dict(nx=16, nv=16, n_steps=8, save_every=4)


# ---------------------------------------------------------------------------------------------
# A straightforward reference of HyPar's right-hand side (numpy, interface by interface rule)
# ---------------------------------------------------------------------------------------------


def _weno_ref(m3, m2, m1, p1, p2):
    """HyPar's WENO5-JS macro, written out independently (same operation order)."""
    s6 = 1.0 / 6.0
    b1 = (13.0 / 12.0) * (m3 - 2 * m2 + m1) * (m3 - 2 * m2 + m1) + 0.25 * (m3 - 4 * m2 + 3 * m1) * (
        m3 - 4 * m2 + 3 * m1
    )
    a1 = 0.1 / ((b1 + 1e-6) * (b1 + 1e-6))
    b2 = (13.0 / 12.0) * (m2 - 2 * m1 + p1) * (m2 - 2 * m1 + p1) + 0.25 * (m2 - p1) * (m2 - p1)
    a2 = 0.6 / ((b2 + 1e-6) * (b2 + 1e-6))
    b3 = (13.0 / 12.0) * (m1 - 2 * p1 + p2) * (m1 - 2 * p1 + p2) + 0.25 * (3 * m1 - 4 * p1 + p2) * (
        3 * m1 - 4 * p1 + p2
    )
    a3 = 0.3 / ((b3 + 1e-6) * (b3 + 1e-6))
    inv = 1.0 / (a1 + a2 + a3)
    f1 = (2 * s6) * m3 + (-7 * s6) * m2 + (11 * s6) * m1
    f2 = (-s6) * m2 + (5 * s6) * m1 + (2 * s6) * p1
    f3 = (2 * s6) * m1 + (5 * s6) * p1 + (-s6) * p2
    return (a1 * inv) * f1 + (a2 * inv) * f2 + (a3 * inv) * f3


def _interface_flux_ref(fc, uc, eig_l, eig_r, eig_tm_l, eig_tm_r, eig_tp_l, eig_tp_r):
    """HyPar's VlasovUpwind along the last axis of ghost-extended fc, uc [..., n + 6]."""
    n = fc.shape[-1] - 6
    interfaces = np.arange(n + 1) + 3  # interface I sits between ghost-array cells I+2 and I+3

    def take(a, offset):
        return a[..., interfaces + offset]

    fL = _weno_ref(take(fc, -3), take(fc, -2), take(fc, -1), take(fc, 0), take(fc, 1))
    fR = _weno_ref(take(fc, 2), take(fc, 1), take(fc, 0), take(fc, -1), take(fc, -2))
    uL = _weno_ref(take(uc, -3), take(uc, -2), take(uc, -1), take(uc, 0), take(uc, 1))
    uR = _weno_ref(take(uc, 2), take(uc, 1), take(uc, 0), take(uc, -1), take(uc, -2))
    eig = np.stack(np.broadcast_arrays(eig_l, eig_r, eig_tm_l, eig_tm_r, eig_tp_l, eig_tp_r))
    all_pos = np.all(eig > 0, axis=0)
    all_neg = np.all(eig < 0, axis=0)
    maxabs = np.max(np.abs(eig), axis=0)
    lf = 0.5 * (fL + fR - maxabs * (uR - uL))
    return np.where(all_pos, fL, np.where(all_neg, fR, lf))


def reference_rhs(u: np.ndarray, E: np.ndarray, periodic_field: bool):
    """du/dt [B, nx, nv] and the v-boundary fluxes straight from HyPar's rules (4 WENOs per axis)"""
    B, nx, nv = u.shape
    dx, dv = 2 * math.pi / nx, 14.0 / nv
    v = -7.0 + 14.0 * np.arange(nv) / nv
    v_ext = np.concatenate([v[0] - dv * np.arange(3, 0, -1), v, v[-1] + dv * np.arange(1, 4)])
    # x direction: lines along x for each v column j; wave speed v_j, transverse v_{j-1}, v_{j+1}
    ux = np.concatenate([u[:, -3:], u, u[:, :3]], axis=1).transpose(0, 2, 1)  # [B, nv, nx+6]
    fx = ux * v[None, :, None]
    vj = v_ext[3:-3][None, :, None]
    vm = v_ext[2:-4][None, :, None]
    vp = v_ext[4:-2][None, :, None]
    F = _interface_flux_ref(fx, ux, vj, vj, vm, vm, vp, vp).transpose(0, 2, 1)  # [B, nx+1, nv]
    # v direction: lines along v for each x row i; wave speed E_i, transverse E_{i-1}, E_{i+1}
    uv = np.concatenate([np.zeros((B, nx, 3)), u, np.zeros((B, nx, 3))], axis=2)
    gv = uv * E[:, :, None]
    if periodic_field:
        e_ext = np.concatenate([E[:, -1:], E, E[:, :1]], axis=1)
    else:
        e_ext = np.concatenate([np.zeros((B, 1)), E, np.zeros((B, 1))], axis=1)
    ei = e_ext[:, 1:-1, None]
    em = e_ext[:, :-2, None]
    ep = e_ext[:, 2:, None]
    G = _interface_flux_ref(gv, uv, ei, ei, em, em, ep, ep)  # [B, nx, nv+1]
    hyp = (1.0 / dx) * (F[:, 1:] - F[:, :-1])
    hyp = hyp + (1.0 / dv) * (G[..., 1:] - G[..., :-1])
    return -hyp, G[..., 0], G[..., -1]


def _perturbed_state(params, nx, nv, seed):
    x, v = vlasov.phase_space_grid(nx, nv)
    u0 = vlasov.initial_condition(params, x, v)
    rng = np.random.default_rng(seed)
    return u0 * (1 + 0.05 * rng.standard_normal(u0.shape))


# ---------------------------------------------------------------------------------------------
# Parameters, grid, initial condition, field
# ---------------------------------------------------------------------------------------------


def test_parameter_grid_order_and_training_subgrid():
    params = vlasov.parameter_grid()
    assert params.shape == (441, 2)
    np.testing.assert_allclose(params[0], [0.9, 1.0])
    np.testing.assert_allclose(params[1], [0.9, 1.01])  # k is the inner loop
    np.testing.assert_allclose(params[21], [0.91, 1.0])
    np.testing.assert_allclose(params[-1], [1.1, 1.2])
    idx = vlasov.training_indices(params + 1e-12)  # robust to round-off
    assert idx.shape == (25,)
    expected = [5 * i * 21 + 5 * j for i in range(5) for j in range(5)]
    assert idx.tolist() == expected
    np.testing.assert_allclose(params[idx[6]], [0.95, 1.05], atol=1e-12)
    with pytest.raises(ValueError, match="not in params"):
        vlasov.training_indices(params[1:])


def test_grid_and_initial_condition():
    x, v = vlasov.phase_space_grid(64, 64)
    assert x[0] == 0.0 and x[-1] < 2 * math.pi
    assert v[0] == -7.0 and v[32] == 0.0 and v[-1] == 7.0 - 14.0 / 64
    u = vlasov.initial_condition(np.array([[1.0, 1.0], [0.9, 1.2]]), x, v)
    assert u.shape == (2, 64, 64) and u.dtype == np.float64
    T, k = 0.9, 1.2
    expected = (
        8
        / math.sqrt(2 * math.pi * T)
        * (1 + 0.1 * math.cos(k * x[5]))
        * (math.exp(-((v[40] - 2) ** 2) / (2 * T)) + math.exp(-((v[40] + 2) ** 2) / (2 * T)))
    )
    assert u[1, 5, 40] == pytest.approx(expected, rel=1e-14)
    # total density 16 per unit length (Maxwellian tails beyond |v| = 7 are ~1e-6)
    mass = u[0].sum() * (2 * math.pi / 64) * (14 / 64)
    assert mass == pytest.approx(16 * 2 * math.pi, rel=1e-6)


@pytest.mark.parametrize("mode", [1, 3, 7])
def test_electric_field_of_a_single_mode(mode):
    # rho - mean = A cos(m x)  =>  E = A sin(m x) / m  (dE/dx = rho - mean, zero mean)
    nx, nv = 16, 8
    x, _ = vlasov.phase_space_grid(nx, nv)
    dv = 14.0 / nv
    A = 0.3
    rho = 2.0 + A * np.cos(mode * x)
    u = np.repeat((rho / (nv * dv))[:, None], nv, axis=1)[None]
    E = vlasov.electric_field(torch.from_numpy(u), dv).numpy()[0]
    np.testing.assert_allclose(E, A * np.sin(mode * x) / mode, atol=1e-14)


def test_electric_field_nyquist_mode_is_zero():
    nx, nv = 16, 8
    dv = 14.0 / nv
    rho = 1.0 + 0.5 * (-1.0) ** np.arange(nx)
    u = np.repeat((rho / (nv * dv))[:, None], nv, axis=1)[None]
    E = vlasov.electric_field(torch.from_numpy(u), dv).numpy()[0]
    np.testing.assert_allclose(E, 0.0, atol=1e-14)


def test_electric_field_in_each_dtype_whatever_ran_before():
    # Seed 4: u [2, 22, 4] (N_x = 22, used by no other test, so this test sees the first call at
    # this size). float32 first, then float64, then float32 again: each result has its input's
    # dtype and matches an independent FFT of rho in float64 to that dtype's rounding, i.e. the
    # float64 field is not computed with the float32 matrix (which drifts by ~1e-8).
    nx, nv = 22, 4
    dv = 14.0 / nv
    u = np.random.default_rng(4).uniform(0.5, 1.5, (2, nx, nv))
    rho = u.sum(axis=-1) * dv
    m = np.fft.fftfreq(nx) * nx
    coef = np.zeros(nx, dtype=np.complex128)
    coef[1:] = -1j / m[1:]
    expected = np.real(np.fft.ifft(np.fft.fft(rho, axis=-1) * coef, axis=-1))
    for dtype, rtol in ((torch.float32, 2e-6), (torch.float64, 1e-13), (torch.float32, 2e-6)):
        E = vlasov.electric_field(torch.as_tensor(u, dtype=dtype), dv)
        assert E.dtype == dtype
        np.testing.assert_allclose(
            E.double().numpy(), expected, rtol=0, atol=rtol * np.abs(expected).max()
        )


# ---------------------------------------------------------------------------------------------
# Scheme
# ---------------------------------------------------------------------------------------------


def test_weno5_fifth_order_on_smooth_periodic_advection():
    # u_t + u_x = 0 with u = exp(sin x): error of the flux-difference operator -(F_{i+1/2} -
    # F_{i-1/2})/dx against the exact -u_x, left-biased (upwind) WENO5 on a periodic grid.
    errors = []
    sizes = [20, 40, 80, 160, 320]
    for n in sizes:
        x = 2 * math.pi * np.arange(n) / n
        dx = 2 * math.pi / n
        u = torch.from_numpy(np.exp(np.sin(x)))
        up = torch.cat([u[-3:], u, u[:3]])
        stencil = [up[s : s + n + 1] for s in range(5)]
        flux = vlasov.weno5(*stencil).numpy()
        dudt = -(flux[1:] - flux[:-1]) / dx
        errors.append(np.max(np.abs(dudt + np.cos(x) * np.exp(np.sin(x)))))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    # measured: 4.11, 4.90, 5.01, 5.05 (the coarsest grid is pre-asymptotic)
    assert np.all(orders[1:] > 4.85), orders
    assert errors[-1] < 3e-8


@pytest.mark.parametrize("lf_rows", [None, 8])
@pytest.mark.parametrize("periodic_field", [False, True])
def test_fast_rhs_equals_straightforward_reference_bitwise(periodic_field, lf_rows):
    nx, nv = 16, 16
    params = np.array([[1.0, 1.0], [0.9, 1.13], [1.1, 1.2]])
    u = _perturbed_state(params, nx, nv, seed=0)
    rhs = vlasov._RightHandSide(nx, nv, periodic_field, torch.device("cpu"), lf_rows=lf_rows)
    ut = torch.from_numpy(u)
    E = vlasov.electric_field(ut, 14.0 / nv)
    # make E cross zero inside and vanish exactly at one node (both interface branches are hit)
    E = E + 0.02 * torch.sign(E[:, :1])
    E[:, 5] = 0.0
    fast, lo, hi, n_mixed = rhs(ut, E)
    if lf_rows is not None:
        assert 3 <= int(n_mixed) <= lf_rows
    ref, ref_lo, ref_hi = reference_rhs(u, E.numpy(), periodic_field)
    assert np.array_equal(fast.numpy(), ref)
    assert np.array_equal(lo.numpy(), ref_lo) and np.array_equal(hi.numpy(), ref_hi)


def test_too_many_lax_friedrichs_rows_fall_back_to_the_dense_flux():
    nx, nv = 16, 16
    stepper = vlasov._Stepper(VlasovSettings(nx=nx, nv=nv), torch.device("cpu"), compile=False)
    assert stepper.rhs_eager.lf_rows == 8
    u = _perturbed_state(np.array([[1.0, 1.0], [1.1, 1.2]]), nx, nv, seed=3)
    E = torch.from_numpy(0.3 * (-1.0) ** np.arange(nx) * np.ones((2, 1)))  # every row is mixed
    k, lo, hi = stepper._rhs(torch.from_numpy(u), E)
    assert stepper.fallbacks == 1
    ref, ref_lo, ref_hi = reference_rhs(u, E.numpy(), False)
    assert np.array_equal(k.numpy(), ref) and np.array_equal(hi.numpy(), ref_hi)


def test_hypar_field_ghosts_differ_from_periodic_field_only_at_the_x_ends():
    nx, nv = 16, 16
    # shift by a quarter period so that E (~ sin x) does not change sign at the x-ends
    u = torch.from_numpy(_perturbed_state(np.array([[1.0, 1.0]]), nx, nv, seed=1))
    u = torch.roll(u, nx // 4, dims=1)
    E = vlasov.electric_field(u, 14.0 / nv)
    assert bool((E[:, :2] * E[:, -2:].flip(-1) > 0).all())
    hypar = vlasov._RightHandSide(nx, nv, False, torch.device("cpu"))(u, E)[0]
    clean = vlasov._RightHandSide(nx, nv, True, torch.device("cpu"))(u, E)[0]
    differs = (hypar != clean).any(dim=-1)[0].numpy()
    assert differs[0] and differs[-1]
    assert not differs[2:-2].any()


@pytest.mark.slow
# importing inductor touches torch.jit.script_method (deprecated inside torch itself)
@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
def test_compiled_rhs_equals_eager():
    nx, nv = 16, 16
    u = torch.from_numpy(_perturbed_state(np.array([[1.0, 1.0], [0.95, 1.1]]), nx, nv, seed=2))
    settings = VlasovSettings(nx=nx, nv=nv)
    compiled = vlasov._Stepper(settings, torch.device("cpu"), compile=True)
    E = vlasov.electric_field(u, 14.0 / nv)
    for a, b in zip(compiled.rhs(u, E)[:3], compiled.rhs_eager(u, E)[:3], strict=True):
        # inductor may rewrite c / x as c * (1 / x): agreement to round-off, not bit for bit
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()))


# ---------------------------------------------------------------------------------------------
# Physics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("periodic_field", [False, True])
def test_mass_changes_only_by_the_v_boundary_flux(periodic_field):
    # A hot plasma (T = 4) has mass at |v| = 7, so the Dirichlet boundaries let mass out.
    nx, nv = 16, 16
    settings = VlasovSettings(nx=nx, nv=nv, periodic_field=periodic_field)
    stepper = vlasov._Stepper(settings, torch.device("cpu"), compile=False)
    x, v = vlasov.phase_space_grid(nx, nv)
    u = torch.from_numpy(vlasov.initial_condition(np.array([[4.0, 1.0], [1.0, 1.1]]), x, v))
    cell = (2 * math.pi / nx) * (14.0 / nv)
    mass0 = u.sum(dim=(1, 2)) * cell
    lost = torch.zeros(2, dtype=torch.float64)
    for _ in range(20):
        before = u.sum(dim=(1, 2)) * cell
        u, outflow = stepper.step(u, boundary_flux=True)
        after = u.sum(dim=(1, 2)) * cell
        torch.testing.assert_close(
            after - before, -outflow, rtol=0, atol=1e-13 * float(mass0.max())
        )
        lost += outflow
    assert lost[0] > 1e-6 * mass0[0]  # the hot case really loses mass through v = +-7


def _two_stream_growth_rate(k: float = 1.0, T: float = 1.0) -> float:
    """Growth rate of the m = 1 mode from the Vlasov dispersion relation of the initial state.

    f0 = (n0/2) [M(v - 2) + M(v + 2)], M a unit Maxwellian of temperature T, n0 = 16 (the
    integral of 8/sqrt(2 pi T) [...]). Linearising u_t + v u_x + E u_v = 0, E_x = rho - mean
    gives 1 - (1/k^2) int f0'(v) / (v - w/k) dv = 0, i.e. (plasma frequency^2 = n0 = 16)
    D(w) = 1 + n0 / (2 T k^2) sum_(+-) [1 + zeta Z(zeta)],  zeta = (w/k -+ 2) / sqrt(2T),
    with Z the plasma dispersion function Z(z) = i sqrt(pi) w(z) (Faddeeva).
    """
    n0 = 16.0

    def D(w):
        total = 0.0
        for v0 in (2.0, -2.0):
            zeta = (w / k - v0) / math.sqrt(2 * T)
            total = total + 1 + zeta * (1j * math.sqrt(math.pi) * wofz(zeta))
        return 1 + n0 / (2 * T * k**2) * total

    root = fsolve(lambda p: [D(p[0] + 1j * p[1]).real, D(p[0] + 1j * p[1]).imag], [0.1, 0.5])
    assert abs(D(root[0] + 1j * root[1])) < 1e-10
    return float(root[1])


def _measured_growth_rate(nx, nv, dt, n_steps, fit_window):
    data = vlasov.solve(
        np.array([[1.0, 1.0]]),
        nx=nx,
        nv=nv,
        dt=dt,
        n_steps=n_steps,
        save_every=1,
        perturbation=1e-6,
        progress=False,
        compile=False,
    )
    rho = data.snapshots[0].sum(axis=-1) * (14.0 / nv)
    amplitude = np.abs(np.fft.fft(rho, axis=-1)[:, 1])  # |E_hat_1| = |rho_hat_1| / 1
    window = (data.times >= fit_window[0]) & (data.times <= fit_window[1])
    return float(np.polyfit(data.times[window], np.log(amplitude[window]), 1)[0])


def test_theory_growth_rate_is_the_known_root():
    gamma = _two_stream_growth_rate()
    assert gamma == pytest.approx(0.674214, abs=1e-6)


def test_small_amplitude_run_grows_at_the_linear_two_stream_rate():
    # Coarse and fast: the Langmuir oscillations excited with the mode die out relative to the
    # growing root by t ~ 8; fit t in [8, 12] (amplitude still ~1e-2 relative: linear).
    gamma = _two_stream_growth_rate()
    measured = _measured_growth_rate(nx=16, nv=32, dt=0.04, n_steps=300, fit_window=(8.0, 12.0))
    assert measured == pytest.approx(gamma, rel=0.02)


@pytest.mark.slow
def test_small_amplitude_growth_rate_at_the_paper_resolution():
    gamma = _two_stream_growth_rate()
    measured = _measured_growth_rate(nx=64, nv=64, dt=0.005, n_steps=2400, fit_window=(8.0, 12.0))
    assert measured == pytest.approx(gamma, rel=0.005)


# ---------------------------------------------------------------------------------------------
# Batching and the public solver
# ---------------------------------------------------------------------------------------------


def test_batch_results_equal_one_by_one_results():
    params = np.array([[1.0, 1.0], [0.9, 1.2], [1.1, 1.05]])
    batch = vlasov.solve(params, **TINY, progress=False, compile=False)
    for i in range(3):
        single = vlasov.solve(params[i : i + 1], **TINY, progress=False, compile=False)
        assert np.array_equal(single.snapshots[0], batch.snapshots[i])
    # a padded last batch (batch_size 2 for 3 parameters) changes nothing either
    padded = vlasov.solve(params, **TINY, progress=False, compile=False, batch_size=2)
    assert np.array_equal(padded.snapshots, batch.snapshots)


def test_worker_processes_give_the_same_snapshots():
    params = np.array([[1.0, 1.0], [0.9, 1.2], [1.1, 1.05]])
    here = vlasov.solve(params, **TINY, progress=False, compile=False, batch_size=2)
    pooled = vlasov.solve(params, **TINY, progress=False, compile=False, batch_size=2, workers=2)
    assert np.array_equal(pooled.snapshots, here.snapshots)


def test_solve_returns_a_complete_snapshot_set():
    data = vlasov.solve(np.array([[1.0, 1.0]]), **TINY, progress=False, compile=False)
    assert data.snapshots.shape == (1, 3, 16, 16)
    np.testing.assert_allclose(data.times, [0.0, 0.02, 0.04], atol=1e-15)
    assert data.param_names == ("T", "k")
    assert list(data.coords) == ["x", "v"]
    x, v = data.coords["x"], data.coords["v"]
    np.testing.assert_array_equal(
        data.snapshots[0, 0], vlasov.initial_condition(data.params, x, v)[0]
    )
    assert data.settings["nx"] == 16 and data.settings["periodic_field"] is False
    # state vectors are x fastest (HyPar order): vec = U[n].T.reshape(-1)
    np.testing.assert_array_equal(data.flat_snapshots()[0, 1], data.snapshots[0, 1].T.reshape(-1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(params=np.array([[0.0, 1.0]])), "positive"),
        (dict(params=np.array([[-1.0, 1.0]])), "positive"),
        (dict(params=np.array([[1.0, 1.0]]), nx=15), "even"),
        (dict(params=np.array([[1.0, 1.0]]), nv=4), ">= 8"),
        (dict(params=np.array([[1.0, 1.0]]), n_steps=10, save_every=4), "multiple"),
        (dict(params=np.array([1.0, 1.0, 1.0])), "shape"),
    ],
)
def test_bad_input_is_rejected_before_any_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vlasov.solve(**kwargs, progress=False, compile=False)


# ---------------------------------------------------------------------------------------------
# Snapshot files: cache, resume, errors, CLI
# ---------------------------------------------------------------------------------------------


def test_generate_writes_the_documented_layout(tmp_path):
    params = np.array([[1.0, 1.0], [0.9, 1.2]])
    path = vlasov.generate_snapshot_file(
        tmp_path / "v.h5", params=params, **TINY, progress=False, compile=False
    )
    assert path == tmp_path / "v.h5"
    assert not (tmp_path / "v.h5.partial").exists()
    with h5py.File(path, "r") as handle:
        assert handle["snapshots"].shape == (2, 3, 16, 16)
        assert handle["snapshots"].chunks == (1, 3, 16, 16)
        assert handle["params"].shape == (2, 2)
    data = load_snapshot_set(path)
    direct = vlasov.solve(params, **TINY, progress=False, compile=False)
    assert np.array_equal(data.snapshots, direct.snapshots)
    assert data.settings == direct.settings
    for key in ("nx", "nv", "dt", "n_steps", "save_every", "periodic_field", "perturbation"):
        assert key in data.settings


def test_generate_is_cached_and_refuses_other_settings(tmp_path, monkeypatch):
    params = np.array([[1.0, 1.0]])
    path = tmp_path / "v.h5"
    vlasov.generate_snapshot_file(path, params=params, **TINY, progress=False, compile=False)
    stamp = path.stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("a cached file must not be recomputed")

    monkeypatch.setattr(vlasov, "_solve_batches", boom)
    vlasov.generate_snapshot_file(path, params=params, **TINY, progress=False)
    assert path.stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="other settings"):
        vlasov.generate_snapshot_file(path, params=params, **TINY, periodic_field=True)
    with pytest.raises(DataError, match="other settings"):
        vlasov.generate_snapshot_file(path, params=np.array([[1.0, 1.1]]), **TINY)
    monkeypatch.undo()
    vlasov.generate_snapshot_file(
        path,
        params=params,
        **TINY,
        periodic_field=True,
        overwrite=True,
        progress=False,
        compile=False,
    )
    assert load_snapshot_set(path).settings["periodic_field"] is True


def test_interrupted_generation_resumes_without_redoing_parameters(tmp_path, monkeypatch):
    params = np.array([[1.0, 1.0], [0.9, 1.2], [1.1, 1.05]])
    path = tmp_path / "v.h5"
    real = vlasov._solve_batches
    solved: list[list[float]] = []

    def interrupted(p, *args, **kwargs):
        for i, (idx, snaps) in enumerate(real(p, *args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            solved.append(p[idx].ravel().tolist())
            yield idx, snaps

    monkeypatch.setattr(vlasov, "_solve_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        vlasov.generate_snapshot_file(
            path, params=params, **TINY, batch_size=1, progress=False, compile=False
        )
    assert not path.exists() and (tmp_path / "v.h5.partial").exists()
    assert len(solved) == 2
    solved.clear()
    monkeypatch.setattr(vlasov, "_solve_batches", lambda p, *a, **k: _record(real, solved, p, a, k))
    vlasov.generate_snapshot_file(path, params=params, **TINY, progress=False, compile=False)
    assert solved == [[1.1, 1.05]]  # only the missing parameter
    full = vlasov.solve(params, **TINY, progress=False, compile=False)
    assert np.array_equal(load_snapshot_set(path).snapshots, full.snapshots)


def _record(real, solved, p, args, kwargs):
    for idx, snaps in real(p, *args, **kwargs):
        solved.append(p[idx].ravel().tolist())
        yield idx, snaps


def test_generate_errors_leave_no_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        vlasov.generate_snapshot_file(tmp_path / "missing" / "v.h5", params=np.array([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="positive"):
        vlasov.generate_snapshot_file(tmp_path / "v.h5", params=np.array([[0.0, 1.0]]), **TINY)
    with pytest.raises(ValueError, match="even"):
        vlasov.generate_snapshot_file(tmp_path / "v.h5", params=np.array([[1.0, 1.0]]), nx=9)
    assert list(tmp_path.iterdir()) == []


def test_load_or_generate(tmp_path):
    data = vlasov.load_or_generate(
        tmp_path / "v.h5", params=np.array([[1.0, 1.0]]), **TINY, progress=False, compile=False
    )
    assert data.snapshots.shape == (1, 3, 16, 16)


def test_cli_reports_bad_input_without_writing(tmp_path, capsys):
    out = tmp_path / "v.h5"
    code = cli.main(["data", "vlasov", "--out", str(out), "--params", "1,1;-0.5,1", "--quiet"])
    assert code == 2
    assert "positive" in capsys.readouterr().err
    code = cli.main(["data", "vlasov", "--out", str(out), "--nx", "7", "--quiet"])
    assert code == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []
