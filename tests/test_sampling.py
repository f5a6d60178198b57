"""Greedy sampling: its config, the schedule of rounds, where the picks go, and the FOM cache."""

import itertools

import numpy as np
import pytest
import torch

from mlasdi.config import ConfigError, GPConfig, SamplingConfig, from_dict
from mlasdi.data import SnapshotSet, save_snapshot_set
from mlasdi.interpolation import CoefficientGP
from mlasdi.problems import oscillator
from mlasdi.problems.oscillator import OscillatorData
from mlasdi.sampling import (
    CachedFOM,
    FileFOM,
    box_corners,
    coef_std_scores,
    initial_points,
    max_std_scores,
    next_points,
    pick,
    points_this_round,
    problem_fom,
    round_due,
)

# ----- config -------------------------------------------------------------------------------


def test_sampling_config_from_dict():
    config = from_dict(
        SamplingConfig,
        {
            "strategy": "greedy",
            "every": 2000,
            "last_round_iter": 28000,
            "min_distance": 0,
            "candidates": [[0.7, 0.9], [0.8, 1]],
        },
        where="sampling",
    )
    assert config.min_distance == 0.0 and config.criterion == "max_std"
    assert config.candidates == ((0.7, 0.9), (0.8, 1.0))


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"strategy": "random"}, "sampling.strategy must be one of ('fixed', 'greedy')"),
        ({"initial": "center"}, "sampling.initial must be one of ('corners', 'explicit')"),
        ({"criterion": "mean_std"}, "sampling.criterion must be one of"),
        ({"every": 0}, "sampling.every must be an integer >= 1, got 0"),
        ({"n_samples": 1}, "sampling.n_samples must be an integer >= 2"),
        ({"points_per_round": True}, "sampling.points_per_round must be of type int"),
        ({"min_distance": 1.5}, "sampling.min_distance must be in [0, 1)"),
        ({"candidates": [[0.7, 0.9], [0.8]]}, "sampling.candidates must be parameter points"),
        ({"evry": 10}, "unknown key(s) ['evry'] in sampling"),
    ],
)
def test_sampling_config_rejects_bad_values_in_one_line(raw, message):
    with pytest.raises(ConfigError) as info:
        from_dict(SamplingConfig, raw, where="sampling")
    assert message in str(info.value) and "\n" not in str(info.value)


# ----- schedule -----------------------------------------------------------------------------


def test_rounds_follow_gplasdis_schedule():
    # n_greedy 2000, max_greedy_iter 28000: rounds after 2000, 4000, ..., 26000 iterations.
    config = SamplingConfig(strategy="greedy", every=2000, last_round_iter=28000)
    due = [k for k in range(1, 28001) if round_due(config, k, 4)]
    assert due == list(range(2000, 28000, 2000))
    capped = SamplingConfig(strategy="greedy", every=10, max_points=6, points_per_round=4)
    assert round_due(capped, 10, 5) and not round_due(capped, 10, 6)
    assert points_this_round(capped, 4) == 2 and points_this_round(capped, 6) == 0
    assert not round_due(SamplingConfig(strategy="fixed", every=10), 10, 4)


def test_greedy_starts_from_the_corners_of_a_2d_box():
    grid = np.array(list(itertools.product(np.linspace(0.7, 0.9, 3), np.linspace(0.9, 1.1, 5))))
    corners = [[0.7, 0.9], [0.7, 1.1], [0.9, 0.9], [0.9, 1.1]]
    np.testing.assert_array_equal(box_corners(grid), corners)
    explicit = grid[[1, 7]]
    greedy = SamplingConfig(strategy="greedy")
    np.testing.assert_array_equal(initial_points(greedy, grid, explicit), corners)
    given = SamplingConfig(strategy="greedy", initial="explicit")
    np.testing.assert_array_equal(initial_points(given, grid, explicit), explicit)
    np.testing.assert_array_equal(initial_points(SamplingConfig(), grid, explicit), explicit)


# ----- picks --------------------------------------------------------------------------------


def test_min_distance_between_picks_and_from_existing_points():
    line = np.linspace(0.0, 1.0, 11)[:, None]  # 0, 0.1, ..., 1 (the box is [0, 1])
    scores = np.array([0, 1, 2, 3, 4, 10, 9, 8, 7, 6, 5], dtype=float)
    # no distance: the three best
    np.testing.assert_array_equal(pick(line, scores, np.empty((0, 1)), n_points=3), [5, 6, 7])
    # 0.25 apart, by score: 0.5 (10) taken; 0.6, 0.7 too close to it; 0.8 (7) taken; 0.9, 1.0,
    # 0.4, 0.3 too close to a pick; 0.2 (2) is 0.3 from 0.5: taken.
    picked = pick(line, scores, np.empty((0, 1)), n_points=3, min_distance=0.25)
    np.testing.assert_array_equal(picked, [5, 8, 2])
    # an existing training point at 0.5 is never picked again, and keeps picks away from it
    picked = pick(line, scores, np.array([[0.5]]), n_points=2, min_distance=0.25)
    np.testing.assert_array_equal(picked, [8, 2])
    picked = pick(line, scores, np.array([[0.5]]), n_points=1)
    np.testing.assert_array_equal(picked, [6])
    # NaN scores first
    scores[0] = np.nan
    np.testing.assert_array_equal(pick(line, scores, np.empty((0, 1)), n_points=1), [0])


def _corner_gp() -> tuple[CoefficientGP, np.ndarray]:
    """A GP of the 2 coefficients [b, a] of dz/dt = a z + b fitted on the corners of [0, 1]^2."""
    corners = box_corners(np.array([[0.0, 0.0], [1.0, 1.0]]))
    b = 0.5 + 0.1 * corners[:, 0] - 0.05 * corners[:, 1]
    a = -0.02 + 0.01 * corners[:, 0] * corners[:, 1]
    gp = CoefficientGP(GPConfig(kernel="rbf", n_restarts=0), seed=0)
    return gp.fit(corners, np.stack([b, a], 1)), corners


def _posterior_variance(gp: CoefficientGP, column: int, x: np.ndarray) -> np.ndarray:
    """k(x, x) - k(x, X) K^-1 k(X, x) of the fitted kernel, written out (standardised inputs;
    in units of the normalised coefficient)."""
    model = gp.models[column]
    X = gp.train_inputs
    xs = (x - gp.input_mean) / gp.input_scale
    K = model.kernel_(X) + gp.config.alpha * np.eye(len(X))
    k = model.kernel_(xs, X)
    prior = model.kernel_.diag(xs)
    return prior - np.einsum("ij,jk,ik->i", k, np.linalg.inv(K), k)


def test_greedy_picks_the_point_of_largest_gp_std():
    gp, corners = _corner_gp()
    grid = np.array(list(itertools.product(np.linspace(0, 1, 5), repeat=2)))
    center = int(np.flatnonzero((grid == 0.5).all(1))[0])
    # the analytic posterior variance of each coefficient is largest at the centre
    for column in (0, 1):
        variance = _posterior_variance(gp, column, grid)
        assert int(np.argmax(variance)) == center
        # the GP's std is its square root, times the coefficient's scale
        away = variance > 1e-9
        ratio = gp.predict(grid)[1][away, column] ** 2 / variance[away]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
    assert int(np.argmax(coef_std_scores(gp, grid))) == center
    coef = SamplingConfig(strategy="greedy", criterion="coef_std")
    rom = _linear_rom(gp)
    u0 = np.tile([[0.3, -0.2, 0.1]], (len(grid), 1))
    np.testing.assert_array_equal(next_points(coef, rom, grid, u0, corners, seed=0), [center])
    # max_std: the decoded samples' spread is largest there too (a linear decoder)
    greedy = SamplingConfig(strategy="greedy", criterion="max_std", n_samples=2000)
    np.testing.assert_array_equal(next_points(greedy, rom, grid, u0, corners, seed=0), [center])
    # chunks of 11 samples of one candidate give the same scores as all at once
    scores = max_std_scores(rom, grid, u0, n_samples=200, seed=0)
    chunked = max_std_scores(rom, grid, u0, n_samples=200, seed=0, chunk_elements=200)
    np.testing.assert_allclose(chunked, scores, rtol=1e-10)
    # two per round, 0.4 apart: the centre, then not its neighbours (0.25 and 0.35 away)
    two = SamplingConfig(
        strategy="greedy", criterion="max_std", n_samples=2000, points_per_round=2, min_distance=0.4
    )
    picks = next_points(two, rom, grid, u0, corners, seed=0)
    assert picks[0] == center
    assert np.linalg.norm(grid[picks[1]] - grid[center]) >= 0.4


def _linear_rom(gp: CoefficientGP):
    from mlasdi.config import AutoencoderConfig, ROMConfig
    from mlasdi.nn import Autoencoder
    from mlasdi.rom import MultiStageROM

    autoencoder = Autoencoder(3, (2,), 1).double()
    autoencoder.encoder = torch.nn.Linear(3, 1).double()
    autoencoder.decoder = torch.nn.Linear(1, 3).double()
    config = ROMConfig(autoencoder=AutoencoderConfig(hidden=(2,), latent_dim=1), dtype="float64")
    return MultiStageROM(autoencoder, gp, np.linspace(0.0, 1.0, 6), config, latent_bound=1e6)


# ----- full-order model ---------------------------------------------------------------------


class CountingFOM:
    def __init__(self):
        self.calls = []

    def __call__(self, params):
        self.calls.append(np.array(params))
        return np.stack([np.full((2, 3), p.sum()) for p in params])


def test_cache_solves_each_point_once(tmp_path):
    fom = CountingFOM()
    cached = CachedFOM(fom, tmp_path / "fom")
    first = cached(np.array([[0.7, 0.9], [0.8, 1.0]]))
    assert (cached.solves, cached.hits) == (2, 0)
    again = cached(np.array([[0.8, 1.0], [0.9, 1.1], [0.9, 1.1]]))
    assert (cached.solves, cached.hits) == (3, 2)
    np.testing.assert_array_equal(again[0], first[1])
    np.testing.assert_array_equal(again[2], np.full((2, 3), 2.0))
    assert len(fom.calls) == 2 and len(fom.calls[1]) == 1  # [0.9, 1.1] once
    # a value typed differently (0.1 + 0.7) is the same point
    cached(np.array([[0.1 + 0.7, 1.0]]))
    assert (cached.solves, cached.hits) == (3, 3)
    # another cache on the same directory (another trial) reads the solves from disk
    other = CachedFOM(CountingFOM(), tmp_path / "fom")
    np.testing.assert_array_equal(other(np.array([[0.9, 1.1]])), again[1:2])
    assert (other.solves, other.hits) == (0, 1) and not other.fom.calls


def test_file_fom_reads_the_rows_of_the_picked_parameters(tmp_path):
    params = np.array([[1.0, 2.0], [1.5, 2.0], [2.0, 3.0]])
    snapshots = np.arange(3 * 4 * 5, dtype=np.float64).reshape(3, 4, 5)
    data = SnapshotSet(
        params=params, times=np.linspace(0, 1, 4), snapshots=snapshots, param_names=("p", "q")
    )
    path = save_snapshot_set(tmp_path / "s.h5", data)
    fom = FileFOM(path)
    np.testing.assert_array_equal(fom.params, params)
    np.testing.assert_array_equal(fom(params[[2, 0, 2]]), snapshots[[2, 0, 2]])
    with pytest.raises(ValueError, match=r"parameter \[1.0, 3.0\] is not in the snapshot file"):
        fom(np.array([[1.0, 3.0]]))


def test_problem_fom_of_the_oscillator_solves_its_points():
    source = OscillatorData(nx=16, n_t=5, grid=(3,))
    fom = problem_fom(source)
    expected = oscillator.snapshot_set([1.2, 1.0], n_x=16, n_t=5).snapshots
    np.testing.assert_array_equal(fom(np.array([[1.2], [1.0]])), expected)
    np.testing.assert_array_equal(fom(np.array([[1.0]]))[0], source.load().snapshots[0])
