"""GP-sample spread, coverage and calibration against exact answers.

The test ROM is linear with a known Gaussian coefficient posterior: latent size 1, dz/dt = b
(A = 0), b ~ N(mu_b, sigma_b^2) and a linear decoder u = W z + c, so that u(t, x) is Gaussian
with mean W (z0 + mu_b t) + c and standard deviation |W_x| sigma_b t, exactly.
"""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from mlasdi.config import AutoencoderConfig, GPConfig, ROMConfig
from mlasdi.dynamics import integrate_expm, integrate_expm_uniform
from mlasdi.interpolation import CoefficientGP
from mlasdi.nn import Autoencoder, ResidualDecoder
from mlasdi.rom import MultiStageROM
from mlasdi.uncertainty import (
    RunningMoments,
    UncertaintyReport,
    assess,
    calibration_scale,
    central_z,
    coverage,
    iter_spread,
    predict_spread,
    sample_coefficients,
    sampled_predictions,
)

N_STATE = 3
W = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
C = torch.tensor([0.1, 0.0, -0.3], dtype=torch.float64)
MU_B = 0.5


class KnownGaussian(CoefficientGP):
    """A coefficient posterior given outright: mean and std [n_coef] at every parameter."""

    def __init__(self, mean, std):
        super().__init__(GPConfig())
        self.mean, self.std = np.asarray(mean, float), np.asarray(std, float)

    def predict(self, params):
        n = np.atleast_2d(params).shape[0]
        return np.tile(self.mean, (n, 1)), np.tile(self.std, (n, 1))


def linear_rom(sigma_b: float, n_t: int = 11) -> MultiStageROM:
    autoencoder = Autoencoder(N_STATE, (2,), 1).double()
    autoencoder.encoder = torch.nn.Linear(N_STATE, 1).double()
    autoencoder.decoder = torch.nn.Linear(1, N_STATE).double()
    with torch.no_grad():
        autoencoder.encoder.weight.copy_(torch.tensor([[0.2, 0.1, -0.4]]))
        autoencoder.encoder.bias.fill_(0.3)
        autoencoder.decoder.weight.copy_(W)
        autoencoder.decoder.bias.copy_(C)
    # Xi = [[b], [a]]: b ~ N(MU_B, sigma_b^2), a = 0 exactly.
    gp = KnownGaussian([MU_B, 0.0], [sigma_b, 0.0])
    config = ROMConfig(autoencoder=AutoencoderConfig(hidden=(2,), latent_dim=1), dtype="float64")
    return MultiStageROM(autoencoder, gp, np.linspace(0.0, 1.0, n_t), config, latent_bound=1e6)


def _u0(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_STATE))


def _truth(rom: MultiStageROM, params: np.ndarray, u0: np.ndarray, seed: int) -> torch.Tensor:
    """One independent draw of the ROM's own distribution per parameter."""
    z0 = rom.autoencoder.encode(torch.as_tensor(u0))
    coefficients = sample_coefficients(rom, params, 1, seed)
    return sampled_predictions(rom, coefficients, z0, rom.times)[0]


def test_running_moments_match_numpy_to_1e12():
    rng = np.random.default_rng(3)
    data = 1e3 + rng.normal(size=(53, 4, 5))
    moments = RunningMoments()
    for start in range(0, 53, 7):  # uneven chunks: 7, ..., 7, 4
        moments.update(torch.as_tensor(data[start : start + 7]))
    assert moments.count == 53
    np.testing.assert_allclose(moments.mean.numpy(), data.mean(0), rtol=1e-12)
    for ddof in (0, 1):
        np.testing.assert_allclose(
            moments.variance(ddof).numpy(), data.var(0, ddof=ddof), rtol=1e-12
        )


def test_running_moments_need_more_values_than_ddof():
    moments = RunningMoments()
    moments.update(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="more than 1 values"):
        moments.variance(1)


def test_sample_std_converges_to_the_analytic_std():
    sigma_b, n_samples = 0.2, 20_000
    rom = linear_rom(sigma_b)
    params, u0 = np.zeros((2, 1)), _u0(2)
    (spread,) = iter_spread(
        rom, params, u0, n_samples=n_samples, seed=5, quantiles=(), chunk_elements=10**7
    )
    # 600 values per chunk: 18 samples of one parameter at a time, merged by the running moments.
    chunked = list(iter_spread(rom, params, u0, n_samples=n_samples, seed=5, chunk_elements=600))
    t = torch.as_tensor(rom.times)[None, :, None]
    exact_std = W[:, 0].abs() * sigma_b * t
    z0 = rom.autoencoder.encode(torch.as_tensor(u0))[:, None, :]
    exact_mean = (z0 + MU_B * t) * W[:, 0] + C
    # The relative standard error of a sample std is 1 / sqrt(2 (S - 1)) = 0.5 %: allow 5 of them.
    np.testing.assert_allclose(spread.std[:, 1:], exact_std.expand(2, -1, -1)[:, 1:], rtol=0.025)
    assert float(spread.std[:, 0].abs().max()) <= 1e-15  # no spread at the initial time
    # The sample mean's standard error is sigma / sqrt(S): 5 of them.
    tolerance = 5 * exact_std / np.sqrt(n_samples) + 1e-12
    assert bool(((spread.mean - exact_mean).abs() <= tolerance).all())
    # Chunking only changes the rounding of the merge.
    assert len(chunked) == 2
    np.testing.assert_allclose(
        torch.cat([c.std for c in chunked]), spread.std, rtol=1e-10, atol=1e-15
    )


def test_sample_quantiles_converge_to_the_gaussian_quantiles():
    sigma_b = 0.2
    rom = linear_rom(sigma_b)
    spread = predict_spread(
        rom, np.zeros((1, 1)), _u0(1), n_samples=20_000, seed=1, quantiles=(0.05, 0.5, 0.95)
    )
    assert spread.quantiles.shape == (3, 1, 11, N_STATE)
    exact_std = W[:, 0].abs() * sigma_b * torch.as_tensor(rom.times)[:, None]
    for i, q in enumerate((0.05, 0.5, 0.95)):
        exact = spread.mean[0] + norm.ppf(q) * exact_std
        # the sample quantile's standard error is <= 1.3 sigma / sqrt(S) here: 5 of them.
        assert bool(((spread.quantiles[i, 0] - exact).abs() <= 0.05 * exact_std + 1e-12).all())


def test_zero_variance_gp_has_zero_spread_and_the_mean_is_the_prediction():
    rom = linear_rom(0.0)
    params, u0 = np.zeros((3, 1)), _u0(3)
    spread = predict_spread(rom, params, u0, n_samples=8, quantiles=(0.1, 0.9))
    prediction = rom.predict(params, u0)
    assert float(spread.std.abs().max()) <= 1e-15
    np.testing.assert_allclose(spread.mean, prediction, rtol=0, atol=1e-13)
    np.testing.assert_allclose(spread.quantiles[0], prediction, rtol=0, atol=1e-13)


def test_coverage_of_a_gaussian_with_known_sigma_is_nominal():
    assert coverage(np.array([0.0, 1.0, 2.0, 3.0]), 1.0, 2.0) == 0.5  # bounds are inside
    assert coverage(torch.tensor([0.0, 1.0, 2.0, 3.0]), 0.5, 3.0) == 0.75
    sigma, n = 2.0, 400_000
    values = np.random.default_rng(11).normal(0.0, sigma, n)
    for level in (0.5, 0.9, 0.95):
        z = central_z(level)
        # 4 binomial standard errors
        assert abs(coverage(values, -z * sigma, z * sigma) - level) < 4 * np.sqrt(0.25 / n)
    assert central_z(0.9) == pytest.approx(1.6448536269514722, rel=1e-12)


def test_spearman_of_the_report_by_hand():
    report = UncertaintyReport(
        levels=(0.9,),
        coverage=(0.9,),
        scale=1.0,
        max_std=np.array([1.0, 2.0, 3.0, 4.0]),
        max_error=np.array([0.1, 0.3, 0.2, 0.4]),
    )
    # ranks (1, 2, 3, 4) vs (1, 3, 2, 4): 1 - 6 * 2 / (4 * 15)
    assert report.spearman == pytest.approx(0.8, abs=1e-12)
    assert report.calibration_curve == [(0.9, 0.9)]


def _expected_coverage(level: float, ratio: float, n_t: int) -> float:
    """Coverage of prediction +- z sigma_hat when the truth's spread is ``ratio`` times the
    ROM's: at t = 0 every value is exact (inside), at later times inside with probability
    P(|N| <= z / ratio)."""
    inside = 2 * norm.cdf(central_z(level) / ratio) - 1
    return (1 + (n_t - 1) * inside) / n_t


def test_calibration_curve_is_nominal_when_the_truth_follows_the_spread():
    rom = linear_rom(0.2)
    n = 1000
    params, u0 = np.zeros((n, 1)), _u0(n)
    truth = _truth(rom, params, u0, seed=123)
    report = assess(rom, params, truth.numpy(), u0=u0, n_samples=200, seed=9)
    # per parameter, every later time is inside or outside together: n binomial draws
    for level, empirical in report.calibration_curve:
        expected = _expected_coverage(level, 1.0, 11)
        assert abs(empirical - expected) < 4 * np.sqrt(0.25 / n)
    assert report.max_std.shape == report.max_error.shape == (n,)


def test_calibrated_interval_recovers_an_understated_spread():
    # The truth varies twice as much as the ROM's GP says; the scale chosen on held-out
    # parameters widens the interval by about 2 and covers 90 % of an independent test set.
    rom, wide = linear_rom(0.2), linear_rom(0.4)
    n, n_samples = 1000, 200
    held_params, held_u0 = np.zeros((n, 1)), _u0(n, seed=1)
    test_params, test_u0 = np.zeros((n, 1)), _u0(n, seed=2)
    held = _truth(wide, held_params, held_u0, seed=7).numpy()
    test = _truth(wide, test_params, test_u0, seed=8).numpy()
    scale = calibration_scale(rom, held_params, held, u0=held_u0, n_samples=n_samples, seed=1)
    # 1/11 of the values (t = 0) are exact, so the rest need the 0.89 two-sided quantile; its
    # sample quantile over 1000 parameters has a standard error of 2.8 %: allow 3 of them.
    expected = 2.0 * central_z((0.9 * 11 - 1) / 10) / central_z(0.9)
    assert scale == pytest.approx(expected, rel=0.085)
    options = dict(u0=test_u0, levels=(0.9,), n_samples=n_samples, seed=2)
    before = assess(rom, test_params, test, **options)
    after = assess(rom, test_params, test, scale=scale, **options)
    # 4 binomial standard errors over 1000 parameters, plus the scale's own error.
    assert before.coverage[0] == pytest.approx(_expected_coverage(0.9, 2.0, 11), abs=0.04)
    assert after.coverage[0] == pytest.approx(0.9, abs=0.05)
    # One pass gives both: the plain coverage and the calibrated one, exactly as two passes.
    both = assess(rom, test_params, test, calibrated_scale=scale, **options)
    assert both.coverage == before.coverage and both.calibrated == after.coverage
    assert both.calibrated_scale == scale and before.calibrated == ()


@pytest.mark.parametrize("n_t", [1, 2, 5, 1001])
def test_uniform_rollout_matches_the_matrix_exponential_at_every_time(n_t):
    g = torch.Generator().manual_seed(4)
    A = 0.5 * torch.randn(6, 4, 4, generator=g, dtype=torch.float64)
    b = torch.randn(6, 4, generator=g, dtype=torch.float64)
    z0 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    dt = 2.0 / max(n_t - 1, 1)
    times = dt * torch.arange(n_t, dtype=torch.float64)
    exact = integrate_expm(A, b, z0, times)
    fast = integrate_expm_uniform(A, b, z0, n_t, dt)
    assert fast.shape == exact.shape == (6, n_t, 4)
    # ~2 sqrt(n_t) products of propagators: round-off of a few 1e-14 of the largest value
    scale = exact.abs().amax(dim=(1, 2), keepdim=True)
    assert float(((fast - exact).abs() / scale).max()) < 1e-12


def test_residual_stages_decode_the_same_sampled_latent_trajectories():
    torch.manual_seed(0)
    residual = ResidualDecoder(1, (4,), N_STATE).double()
    rom = linear_rom(0.2).with_stage(residual, 0.5)
    params, u0 = np.zeros((2, 1)), _u0(2)
    coefficients = sample_coefficients(rom, params, 3, seed=4)
    z0 = rom.autoencoder.encode(torch.as_tensor(u0))
    one = sampled_predictions(rom, coefficients, z0, rom.times, n_stages=1)
    two = sampled_predictions(rom, coefficients, z0, rom.times)
    # each sample's latent trajectory, integrated on its own
    A, b = coefficients[..., 1:, :].mT, coefficients[..., 0, :]
    times = torch.as_tensor(rom.times)
    Z = torch.stack([integrate_expm(A[s], b[s], z0, times) for s in range(3)])
    with torch.no_grad():
        np.testing.assert_allclose(two - one, 0.5 * residual(Z), rtol=0, atol=1e-12)
        np.testing.assert_allclose(one, rom.autoencoder.decode(Z), rtol=0, atol=1e-12)
    # with a zero-variance GP the two-stage spread's mean is the two-stage prediction
    flat = linear_rom(0.0).with_stage(residual, 0.5)
    spread = predict_spread(flat, params, u0, n_samples=4)
    np.testing.assert_allclose(spread.mean, flat.predict(params, u0), rtol=0, atol=1e-13)
