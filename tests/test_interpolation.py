"""Gaussian-process interpolation of coefficients: exact at training points, reproducible."""

import multiprocessing
import os

import numpy as np
import pytest

from mlasdi.config import GPConfig
from mlasdi.interpolation import CoefficientGP

CONFIG = GPConfig(nu=1.5, n_restarts=1, alpha=1e-10)


def _training_data(seed: int = 0, n_train: int = 6, n_coef: int = 3):
    """Params [n_train, 2] on a small 2-D grid-ish cloud, smooth coefficients [n_train, n_coef]."""
    rng = np.random.default_rng(seed)
    params = rng.uniform(0.0, 1.0, size=(n_train, 2))
    w = rng.standard_normal((2, n_coef))
    coefficients = np.sin(params @ w) + 0.5 * params[:, :1]
    return params, coefficients


def test_gp_reproduces_training_points():
    # Seed 0: 6 training points in 2-D, 3 coefficients; alpha = 1e-10, so the GP interpolates.
    params, coefficients = _training_data(seed=0)
    gp = CoefficientGP(CONFIG, seed=0).fit(params, coefficients)
    mean, std = gp.predict(params)
    assert mean.shape == std.shape == (6, 3)
    scale = np.abs(coefficients).max(axis=0)
    assert np.all(np.abs(mean - coefficients) <= 1e-6 * scale), np.abs(mean - coefficients).max(0)
    # The posterior std at a training input is ~sqrt(alpha) x the output scale.
    assert np.all(std < 1e-4 * coefficients.std(axis=0))
    # ... and clearly nonzero away from them.
    _, std_far = gp.predict(params.mean(axis=0, keepdims=True) + 0.37)
    assert np.all(std_far > 1e-3 * coefficients.std(axis=0))


def test_gp_standardises_inputs_with_large_offset_and_scale():
    # Seed 1: parameters T ~ 1000 + 40 u and k ~ 1e-3 u, u in [0, 1): the fit must equal a fit on
    # the standardised parameters (the GP's length-scale bounds are in standardised units).
    rng = np.random.default_rng(1)
    u = rng.uniform(0.0, 1.0, size=(5, 2))
    params = np.column_stack([1000.0 + 40.0 * u[:, 0], 1e-3 * u[:, 1]])
    coefficients = np.column_stack([np.cos(3 * u[:, 0]) * u[:, 1], u[:, 0] ** 2 - u[:, 1]])
    standardised = (params - params.mean(0)) / params.std(0)

    raw = CoefficientGP(CONFIG, seed=3).fit(params, coefficients)
    ref = CoefficientGP(CONFIG, seed=3).fit(standardised, coefficients)
    np.testing.assert_allclose(raw.input_mean, params.mean(0), rtol=1e-14)
    np.testing.assert_allclose(raw.input_scale, params.std(0), rtol=1e-14)
    np.testing.assert_allclose(raw.state()["kernel_theta"], ref.state()["kernel_theta"], atol=1e-6)

    u_new = rng.uniform(0.0, 1.0, size=(4, 2))
    new = np.column_stack([1000.0 + 40.0 * u_new[:, 0], 1e-3 * u_new[:, 1]])
    mean_raw, std_raw = raw.predict(new)
    mean_ref, std_ref = ref.predict((new - params.mean(0)) / params.std(0))
    np.testing.assert_allclose(mean_raw, mean_ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(std_raw, std_ref, rtol=1e-6, atol=1e-9)


def test_gp_constant_parameter_column_is_not_divided_by_zero():
    # A parameter that is the same at every training point gets scale 1, not NaN.
    params, coefficients = _training_data(seed=2, n_train=4, n_coef=2)
    params[:, 1] = 5.0
    gp = CoefficientGP(CONFIG, seed=0).fit(params, coefficients)
    assert gp.input_scale[1] == 1.0
    mean, std = gp.predict(params)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(std))
    np.testing.assert_allclose(mean, coefficients, atol=1e-6)


def test_gp_state_round_trip_reproduces_predictions():
    params, coefficients = _training_data(seed=4)
    gp = CoefficientGP(CONFIG, seed=5).fit(params, coefficients)
    state = gp.state()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    copy = CoefficientGP.from_state(CONFIG, 5, {k: v.copy() for k, v in state.items()})
    query = np.random.default_rng(6).uniform(-0.2, 1.2, size=(7, 2))
    for a, b in zip(gp.predict(query), copy.predict(query), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


def test_gp_sample_shape_and_moments():
    # Seed 7 for the fit data, seed 8 for 20000 draws; sample mean/std -> predict's within
    # 5 standard errors (mean: std / sqrt(n); std: std / sqrt(2 n)).
    params, coefficients = _training_data(seed=7)
    gp = CoefficientGP(CONFIG, seed=0).fit(params, coefficients)
    query = np.array([[0.5, 0.5], [1.3, -0.4]])
    mean, std = gp.predict(query)
    n = 20_000
    draws = gp.sample(query, n, seed=8)
    assert draws.shape == (n, 2, 3)
    assert np.all(np.abs(draws.mean(0) - mean) <= 5 * std / np.sqrt(n))
    assert np.all(np.abs(draws.std(0) - std) <= 5 * std / np.sqrt(2 * n))
    np.testing.assert_array_equal(gp.sample(query, 3, seed=8), gp.sample(query, 3, seed=8))
    assert not np.array_equal(gp.sample(query, 3, seed=8), gp.sample(query, 3, seed=9))


def test_gp_fit_is_deterministic_for_a_seed():
    params, coefficients = _training_data(seed=9)
    config = GPConfig(n_restarts=3)
    a = CoefficientGP(config, seed=42).fit(params, coefficients)
    b = CoefficientGP(config, seed=42).fit(params, coefficients)
    np.testing.assert_array_equal(a.state()["kernel_theta"], b.state()["kernel_theta"])
    query = np.random.default_rng(10).uniform(size=(5, 2))
    for x, y in zip(a.predict(query), b.predict(query), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("workers", [2, 3])
def test_gp_fit_with_workers_equals_the_sequential_fit_and_never_forks(workers, monkeypatch):
    # Seed 11: 7 coefficients (uneven chunks for 2 and 3 workers), 3 restarts each; the workers
    # must give the same hyperparameters and predictions bit for bit, without a fork (the fit
    # runs inside torch's and Ray's threaded processes, where a fork can deadlock): os.fork is
    # made to fail, as is starting any child process.
    params, coefficients = _training_data(seed=11, n_coef=7)
    config = GPConfig(n_restarts=3)
    sequential = CoefficientGP(config, seed=5).fit(params, coefficients)

    def refuse(*args, **kwargs):
        raise AssertionError("the GP fit started a process")

    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    parallel = CoefficientGP(config, seed=5).fit(params, coefficients, workers=workers)
    np.testing.assert_array_equal(
        parallel.state()["kernel_theta"], sequential.state()["kernel_theta"]
    )
    query = np.random.default_rng(12).uniform(size=(4, 2))
    for x, y in zip(parallel.predict(query), sequential.predict(query), strict=True):
        np.testing.assert_array_equal(x, y)


def test_gp_rejects_bad_shapes_and_non_finite_coefficients():
    params, coefficients = _training_data(seed=11)
    gp = CoefficientGP(CONFIG)
    with pytest.raises(ValueError, match=r"need params \[n_train, n_p\]"):
        gp.fit(params[:, 0], coefficients)
    with pytest.raises(ValueError, match=r"need params \[n_train, n_p\]"):
        gp.fit(params[:-1], coefficients)
    coefficients[2, 1] = np.nan
    with pytest.raises(ValueError, match="coefficients contain NaN or Inf"):
        gp.fit(params, coefficients)


def test_rbf_kernel_equals_sklearn_with_that_kernel_on_standardised_inputs():
    # Seed 2: 7 points, 2 coefficients. The rbf GP with its length scale bounded below by 1.4
    # (GPLaSDI's bound on its Burgers box, see GPConfig) is sklearn's GP with Constant x RBF on
    # the standardised inputs, built here independently; the fitted length scale respects the
    # bound.
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel

    params, coefficients = _training_data(seed=2, n_train=7, n_coef=2)
    config = GPConfig(kernel="rbf", length_scale_bounds=(1.4, 1e3), n_restarts=1)
    gp = CoefficientGP(config, seed=0).fit(params, coefficients)
    x = (params - params.mean(0)) / params.std(0)
    test = np.random.default_rng(3).uniform(0.0, 1.0, size=(9, 2))
    mean, std = gp.predict(test)
    for i in range(2):
        reference = GaussianProcessRegressor(
            ConstantKernel(1.0, (1e-4, 1e4)) * RBF(1.4, (1.4, 1e3)),
            alpha=1e-10,
            normalize_y=True,
            n_restarts_optimizer=1,
            random_state=np.random.RandomState(i),
        ).fit(x, coefficients[:, i])
        ref_mean, ref_std = reference.predict((test - params.mean(0)) / params.std(0), True)
        np.testing.assert_allclose(mean[:, i], ref_mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(std[:, i], ref_std, rtol=1e-8, atol=1e-12)
        length = gp.models[i].kernel_.k2.length_scale
        assert 1.4 <= length <= 1e3
    # The default kernel is still Matern 1.5 with bounds (1e-2, 1e3).
    assert (GPConfig().kernel, GPConfig().length_scale_bounds) == ("matern", (1e-2, 1e3))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"kernel": "cubic"}, "gp.kernel must be one of ['matern', 'rbf'], got 'cubic'"),
        ({"length_scale_bounds": (2.0, 1.0)}, "gp.length_scale_bounds must be [low, high]"),
        ({"length_scale_bounds": (0.0, 1.0)}, "0 < low < high"),
        ({"length_scale_bounds": (1.0,)}, "got (1.0,)"),
    ],
)
def test_gp_config_rejects_bad_kernels_and_bounds(kwargs, needle):
    with pytest.raises(ValueError) as info:
        GPConfig(**kwargs)
    assert needle in str(info.value)
