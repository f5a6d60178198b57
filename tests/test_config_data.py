"""Typed config (round trip, unknown keys) and snapshot sets in memory and in HDF5."""

import h5py
import numpy as np
import pytest

from mlasdi.config import (
    AutoencoderConfig,
    ConfigError,
    GPConfig,
    ResidualStageConfig,
    ROMConfig,
    Stage1Config,
    from_dict,
    to_dict,
)
from mlasdi.data import (
    DataError,
    SnapshotFileWriter,
    SnapshotSet,
    flatten_grid,
    load_snapshot_set,
    save_snapshot_set,
)

# --- config --------------------------------------------------------------------------------------


def _nondefault_config() -> ROMConfig:
    return ROMConfig(
        autoencoder=AutoencoderConfig(hidden=(32, 8), latent_dim=4, activation="tanh"),
        stage1=Stage1Config(iters=123, lr=2e-3, beta1=0.5, beta2=0.0, fd_scheme="central2"),
        residual_stages=(
            ResidualStageConfig(hidden=(8, 32), kappa=2.5, iters=7),
            ResidualStageConfig(hidden=(16,), kappa=1.0, iters=9, activation="sin"),
        ),
        gp=GPConfig(nu=float("inf"), n_restarts=0, alpha=1e-8),
        integrator="rk4",
        rk4_substeps=3,
        dtype="float64",
        seed=99,
    )


@pytest.mark.parametrize("config", [ROMConfig(), _nondefault_config()], ids=["default", "custom"])
def test_config_round_trips_through_dict_and_json(config):
    import json

    data = to_dict(config)
    assert isinstance(data["autoencoder"]["hidden"], list)
    assert from_dict(ROMConfig, data) == config
    assert from_dict(ROMConfig, json.loads(json.dumps(data))) == config
    assert config.to_dict() == data


def test_config_defaults_match_design():
    config = from_dict(ROMConfig, {})
    assert config == ROMConfig()
    assert (config.stage1.beta1, config.stage1.beta2, config.stage1.lr) == (0.1, 1e-3, 1e-3)
    assert config.n_stages == 1 and config.stage_iters == (10_000,)
    assert _nondefault_config().stage_iters == (123, 7, 9)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"sead": 1}, r"unknown key\(s\) \['sead'\] in ROMConfig"),
        ({"stage1": {"lrr": 1}}, r"unknown key\(s\) \['lrr'\] in stage1"),
        (
            {"residual_stages": [{"iters": 5}, {"kapa": 2.0}]},
            r"unknown key\(s\) \['kapa'\] in residual_stages\[1\]",
        ),
        ({"autoencoder": {"latent_dim": 2.5}}, r"autoencoder.latent_dim must be of type int"),
        ({"seed": True}, r"seed must be of type int"),
        ({"autoencoder": {"hidden": 64}}, r"autoencoder.hidden must be a list"),
        ({"stage1": 3}, r"stage1 must be a table/mapping"),
        ({"stage1": {"fd_scheme": "central6"}}, r"stage1.fd_scheme must be one of"),
        ({"integrator": "euler"}, r"integrator must be one of"),
    ],
)
def test_config_rejects_unknown_keys_and_bad_values(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(ROMConfig, data)


def test_config_coerces_int_to_float():
    config = from_dict(ROMConfig, {"stage1": {"lr": 1}, "gp": {"alpha": 1}})
    assert config.stage1.lr == 1.0 and isinstance(config.stage1.lr, float)
    assert config.gp.alpha == 1.0 and isinstance(config.gp.alpha, float)


# --- SnapshotSet ---------------------------------------------------------------------------------


def _grid_set(seed: int = 0, n_mu: int = 3, n_t: int = 5, nx: int = 4, nv: int = 3) -> SnapshotSet:
    """A [n_mu, n_t, nx, nv] snapshot set with random values (seeded) and 2 parameters."""
    rng = np.random.default_rng(seed)
    return SnapshotSet(
        params=rng.uniform(size=(n_mu, 2)),
        times=0.1 * np.arange(n_t),
        snapshots=rng.standard_normal((n_mu, n_t, nx, nv)),
        param_names=("T", "k"),
        coords={"x": np.linspace(0, 1, nx), "v": np.linspace(-1, 1, nv)},
        settings={"problem": "random", "seed": seed, "nested": {"a": [1, 2]}},
    )


def test_flat_snapshots_first_grid_axis_fastest():
    data = _grid_set()
    flat = data.flat_snapshots()
    assert flat.shape == (3, 5, 12) and data.n_state == 12 and data.grid_shape == (4, 3)
    U = data.snapshots
    for n in range(3):
        for t in range(5):
            np.testing.assert_array_equal(flat[n, t], U[n, t].T.reshape(-1))
    # element (x, v) sits at v * N_x + x
    assert flat[1, 2, 2 * 4 + 3] == U[1, 2, 3, 2]
    np.testing.assert_array_equal(flatten_grid(U, 2), flat)


def test_flatten_grid_one_axis_is_identity():
    U = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(flatten_grid(U, 1), U)


def test_snapshot_set_properties_subset_and_index_of():
    data = _grid_set()
    assert data.dt == pytest.approx(0.1, rel=1e-12)
    sub = data.subset([2, 0])
    np.testing.assert_array_equal(sub.snapshots, data.snapshots[[2, 0]])
    np.testing.assert_array_equal(sub.params, data.params[[2, 0]])
    np.testing.assert_array_equal(data.index_of(data.params[[1, 2]]), [1, 2])
    np.testing.assert_array_equal(data.index_of(np.array([[5.0, 5.0]])), [-1])


def _kwargs(**override):
    base = dict(
        params=np.zeros((2, 1)),
        times=np.linspace(0.0, 1.0, 4),
        snapshots=np.zeros((2, 4, 5)),
        param_names=("A",),
    )
    base.update(override)
    return base


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"snapshots": np.zeros((2, 4))}, r"rank >= 3\), got rank 2"),
        ({"params": np.zeros(2)}, r"params must have shape \[n_mu, n_p\]"),
        ({"snapshots": np.zeros((3, 4, 5))}, "snapshots has 3 parameters but params has 2"),
        ({"snapshots": np.zeros((2, 3, 5))}, "snapshots has 3 times but times has 4"),
        ({"times": np.array([0.0, 0.1, 0.3, 0.4])}, "increasing and uniformly spaced"),
        ({"times": np.array([0.3, 0.2, 0.1, 0.0])}, "increasing and uniformly spaced"),
        ({"times": np.array([0.0, 0.1])}, "at least 3 entries"),
        ({"param_names": ("A", "B")}, "2 parameter names for 1 parameters"),
        ({"coords": {"x": np.zeros(5), "v": np.zeros(2)}}, "2 coordinate arrays for 1 grid axes"),
    ],
)
def test_snapshot_set_rejects_bad_input(override, match):
    with pytest.raises(DataError, match=match):
        SnapshotSet(**_kwargs(**override))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_snapshot_set_rejects_non_finite_values(bad):
    snapshots = np.zeros((3, 4, 5))
    snapshots[1, 2, 3] = bad
    with pytest.raises(DataError, match=r"NaN or Inf \(parameter indices \[1\]\)"):
        SnapshotSet(**_kwargs(params=np.zeros((3, 1)), snapshots=snapshots))


# --- HDF5 ----------------------------------------------------------------------------------------


def _assert_same_set(a: SnapshotSet, b: SnapshotSet) -> None:
    np.testing.assert_array_equal(a.snapshots, b.snapshots)
    assert a.snapshots.dtype == b.snapshots.dtype
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(a.times, b.times)
    assert a.param_names == b.param_names
    assert list(a.coords) == list(b.coords)
    for name in a.coords:
        np.testing.assert_array_equal(a.coords[name], b.coords[name])
    assert dict(a.settings) == dict(b.settings)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hdf5_round_trip_is_exact(tmp_path, dtype):
    data = _grid_set(seed=1)
    data = SnapshotSet(**{**data.__dict__, "snapshots": data.snapshots.astype(dtype)})
    path = save_snapshot_set(tmp_path / "set.h5", data)
    assert path == tmp_path / "set.h5"
    assert not (tmp_path / "set.h5.partial").exists()
    _assert_same_set(load_snapshot_set(path), data)
    with h5py.File(path, "r") as handle:
        assert handle["snapshots"].chunks == (1, 5, 4, 3)  # one parameter per chunk


def test_load_snapshot_set_indices_in_any_order(tmp_path):
    data = _grid_set(seed=2, n_mu=5)
    path = save_snapshot_set(tmp_path / "set.h5", data)
    for indices in ([3, 0, 4], [4, 3, 2, 1, 0], [2], np.array([1, 4])):
        _assert_same_set(load_snapshot_set(path, indices=indices), data.subset(indices))


def test_load_snapshot_set_repeated_indices_like_subset(tmp_path):
    # SnapshotSet.subset accepts repeated indices; reading the same rows from disk must too
    # (e.g. a bootstrap resample of parameters).
    data = _grid_set(seed=10, n_mu=4)
    path = save_snapshot_set(tmp_path / "set.h5", data)
    _assert_same_set(load_snapshot_set(path, indices=[2, 0, 2]), data.subset([2, 0, 2]))


def test_load_snapshot_set_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_snapshot_set(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle.create_dataset("snapshots", data=np.zeros((1, 3, 2)))
    with pytest.raises(DataError, match=r"not a snapshot file: missing datasets \['completed'"):
        load_snapshot_set(tmp_path / "other.h5")


def _writer(path, data: SnapshotSet, **override) -> SnapshotFileWriter:
    return SnapshotFileWriter(path, **{**data.file_layout(), **override})


def test_snapshot_file_writer_resumes_an_interrupted_run(tmp_path):
    data = _grid_set(seed=3, n_mu=4)
    path = tmp_path / "set.h5"
    partial = tmp_path / "set.h5.partial"

    with _writer(path, data) as writer:
        writer.write([2, 0], data.snapshots[[2, 0]])
        np.testing.assert_array_equal(writer.completed, [True, False, True, False])
        with pytest.raises(DataError, match=r"2 parameters not written yet \(first: \[1, 3\]\)"):
            writer.finish()
    assert partial.exists() and not path.exists()

    with pytest.raises(DataError, match="interrupted run with other settings"):
        _writer(path, data, settings={**data.settings, "seed": 4})
    with pytest.raises(DataError, match="interrupted run with other settings"):
        _writer(path, data, params=data.params + 1.0)

    writer = _writer(path, data)  # same settings: resume
    np.testing.assert_array_equal(writer.completed, [True, False, True, False])
    writer.write([3, 1], data.snapshots[[3, 1]])
    assert not path.exists()
    assert writer.finish() == path
    assert path.exists() and not partial.exists()
    _assert_same_set(load_snapshot_set(path), data)


def test_snapshot_file_writer_does_not_resume_a_different_layout(tmp_path):
    # Same settings and params but other times or grid: the partial file's layout does not fit,
    # so resuming must be refused (not silently mixed, DESIGN.md "Data on disk").
    data = _grid_set(seed=5)
    path = tmp_path / "set.h5"
    with _writer(path, data) as writer:
        writer.write([0], data.snapshots[[0]])
    with pytest.raises(DataError, match="interrupted run with other settings"):
        _writer(path, data, times=0.05 * np.arange(9))
    with pytest.raises(DataError, match="interrupted run with other settings"):
        _writer(path, data, grid_shape=(8, 3))


def test_snapshot_file_writer_overwrite_starts_again(tmp_path):
    data = _grid_set(seed=6)
    path = tmp_path / "set.h5"
    with _writer(path, data) as writer:
        writer.write([0, 1], data.snapshots[[0, 1]])
    other = {**data.settings, "seed": 7}
    writer = _writer(path, data, settings=other, overwrite=True)
    np.testing.assert_array_equal(writer.completed, [False, False, False])
    writer.close()


def test_snapshot_file_writer_rejects_non_finite_rows_and_missing_directory(tmp_path):
    data = _grid_set(seed=8)
    with pytest.raises(DataError, match="does not exist"):
        _writer(tmp_path / "missing" / "set.h5", data)
    bad = data.snapshots[[1]].copy()
    bad[0, 0, 0, 0] = np.nan
    with _writer(tmp_path / "set.h5", data) as writer:
        with pytest.raises(DataError, match="NaN or Inf"):
            writer.write([1], bad)
        np.testing.assert_array_equal(writer.completed, [False, False, False])


def test_load_refuses_an_incomplete_file(tmp_path):
    data = _grid_set(seed=9)
    with _writer(tmp_path / "set.h5", data) as writer:
        writer.write([0], data.snapshots[[0]])
    (tmp_path / "set.h5.partial").rename(tmp_path / "set.h5")
    with pytest.raises(DataError, match="incomplete"):
        load_snapshot_set(tmp_path / "set.h5")
