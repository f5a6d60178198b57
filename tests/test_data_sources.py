"""Data sources behind one interface: the registry, a user's snapshot file (training-split
precedence, smoke, a study and ``mlasdi fit`` on it), ``mlasdi data import`` and every bad-file
case (one line naming the file, exit code 2, nothing written under --out).

The user file is 1D advection-diffusion on a periodic grid with a closed form:
u(x, t; c, nu) = sum_k a_k exp(-nu k^2 t) sin(k (x - c t) + phi_k).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import ClassVar

import h5py
import numpy as np
import pytest
from helpers import advection_set, file_spec

from mlasdi.cli import main as mlasdi_main
from mlasdi.config import ConfigError
from mlasdi.data import DataError, SnapshotSet, import_npz, load_snapshot_set, save_snapshot_set
from mlasdi.problems import SOURCES, data_source
from mlasdi.problems import vlasov as vlasov_module
from mlasdi.problems.source import GeneratedGrid
from mlasdi.study_data import load_study_data
from studies.cli import main as study_main
from studies.plan import format_plan
from studies.spec import dump_toml, load_spec, smoke_spec, spec_from_dict, tomllib


@pytest.fixture
def adv_file(tmp_path):
    """A 3 x 3 (c, nu) file whose train dataset marks the four corners."""
    data = advection_set()
    corners = np.isin(np.arange(9), [0, 2, 6, 8])
    return save_snapshot_set(tmp_path / "adv.h5", data, train=corners)


def test_spec_toml_round_trips_any_path_and_key():
    # A data file path may hold any character (a newline, a tab, quotes, backslashes, non-ASCII)
    # and a table key may need quoting; what dump_toml writes reads back the same. A
    # hand-written writer left the newline raw inside a basic string: invalid TOML.
    raw = {
        "name": 'run "A"',
        "seeds": [0, 1],
        "data": {"file": 'C:\\data\\x y\n\t"é".h5', "grid": (3, 2)},
        "training": {"gp": {"length scale": [0.5, math.inf]}},
    }
    again = tomllib.loads(dump_toml(raw))
    assert again == {**raw, "data": {**raw["data"], "grid": [3, 2]}}


# ----- the registry and the built-in sources ------------------------------------------------


def test_registry_names_and_presets_keep_their_data():
    assert list(SOURCES) == ["vlasov", "oscillator", "burgers1d", "file"]
    paper = load_spec("vlasov_paper").data
    assert (paper.problem, paper.nx, paper.nv, paper.grid, paper.train_stride) == (
        "vlasov",
        64,
        64,
        (21, 21),
        (0.05,),
    )
    assert (paper.n_state, paper.n_times, paper.n_train()) == (4096, 251, 25)
    quick = load_spec("vlasov_quick").data
    assert (quick.n_state, quick.n_times, quick.n_train(), quick.time_stride) == (1024, 51, 25, 5)
    smoke = load_spec("smoke").data
    assert (smoke.problem, smoke.n_state, smoke.n_times, smoke.n_train()) == (
        "oscillator",
        100,
        41,
        2,
    )
    assert smoke_spec(load_spec("smoke")).data == smoke  # the oscillator is its own smoke


def test_oscillator_source_gives_the_same_data_and_split_as_the_module():
    from mlasdi.problems import oscillator

    source = data_source({"problem": "oscillator", "nx": 50, "n_t": 11, "grid": [3]})
    data = source.load()
    ref = oscillator.snapshot_set((1.0, 1.2, 1.4), n_x=50, n_t=11)
    np.testing.assert_array_equal(data.snapshots, ref.snapshots)
    np.testing.assert_array_equal(source.training_indices(data), [0, 2])
    np.testing.assert_array_equal(source.initial_conditions(data), ref.snapshots[:, 0])


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (
            {"problem": "custom"},
            "data.problem must be one of ['vlasov', 'oscillator', 'burgers1d', 'file']",
        ),
        (
            {"problem": "oscillator", "file": "a.h5"},
            "data.file does not apply to problem 'oscillator'",
        ),
        ({"problem": "vlasov", "n_t": 3}, "data.n_t does not apply to problem 'vlasov'"),
        ({"problem": "vlasov", "colour": 1}, "unknown key(s) ['colour'] in [data]"),
        ({"problem": "vlasov", "nx": 9}, "nx must be even and >= 8"),
        (
            {"problem": "vlasov", "grid": [5, 5], "train_stride": 0.03},
            "data.train_stride 0.03 does not divide the range [0.9, 1.1] of parameter T",
        ),
        ({"problem": "vlasov", "time_stride": 200}, "leaves 2 of 251 snapshots; need at least 3"),
        ({}, "data.file must name the snapshot file"),
    ],
)
def test_bad_data_keys_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as info:
        data_source(raw)
    assert needle in str(info.value)


# ----- a user's file: the training split ----------------------------------------------------


def test_training_split_precedence(adv_file):
    params = load_snapshot_set(adv_file).params

    def rows(**keys):
        source = data_source({"file": str(adv_file), **keys})
        return sorted(source.training_indices(source.load()).tolist())

    assert rows() == [0, 2, 6, 8]  # the file's train dataset
    assert rows(train_stride=[1.0, 0.04]) == [0, 2, 6, 8]
    assert rows(train_stride=[0.5, 0.04]) == [0, 2, 3, 5, 6, 8]
    assert rows(train_stride=[0.5, 0.02]) == list(range(9))
    # train_params before train_stride (a stride of 1.0 does not divide nu's range: unused)
    assert rows(train_params=[params[4].tolist(), params[0].tolist()], train_stride=1.0) == [0, 4]
    assert rows(train_params=[[1.0, 0.03], [0.5, 0.01]]) == [0, 4]  # typed vs linspace values
    # train_index before everything
    assert rows(train_index=[1, 7], train_params=[[1.0, 0.03], [0.5, 0.01]]) == [1, 7]
    with pytest.raises(ConfigError, match="does not divide the range"):
        data_source({"file": str(adv_file), "train_stride": 1.0})


def test_a_stride_that_does_not_fit_says_its_unit_and_the_strides_that_fit(adv_file):
    # adv_file: c in {0.5, 1.0, 1.5}, nu in {0.01, 0.03, 0.05}.
    with pytest.raises(ConfigError) as info:
        data_source({"file": str(adv_file), "train_stride": 0.1})
    assert str(info.value) == (
        "data.train_stride 0.1: c = 0.6 is not on the grid of "
        f"{adv_file} (values [0.5, 1.0, 1.5]); strides that fit its values [0.5, 1.0, 1.5]: "
        "0.5, 1"
    )
    with pytest.raises(ConfigError) as info:
        data_source({"file": str(adv_file), "train_stride": [0.5, 0.03]})
    assert str(info.value).startswith(
        "data.train_stride 0.03 does not divide the range [0.01, 0.05] of parameter nu: the "
        "stride is a step in nu's own units along its axis; strides that fit its values "
        "[0.01, 0.03, 0.05]: 0.02, 0.04"
    )


def test_train_stride_on_a_file_matches_the_vlasov_training_grid(tmp_path):
    params = vlasov_module.parameter_grid(9, 9)
    rng = np.random.default_rng(0)
    data = SnapshotSet(
        params=params,
        times=np.arange(4.0),
        snapshots=rng.standard_normal((81, 4, 3)),
        param_names=("T", "k"),
    )
    path = save_snapshot_set(tmp_path / "grid.h5", data)
    source = data_source({"file": str(path), "train_stride": 0.05})
    loaded = source.load()
    np.testing.assert_array_equal(
        np.sort(source.training_indices(loaded)),
        np.sort(vlasov_module.training_indices(params, 0.05)),
    )


def test_study_data_of_a_file_splits_and_strides_exactly(adv_file, tmp_path):
    spec = load_spec(file_spec(tmp_path, adv_file, time_stride=2))
    data = load_study_data(spec.data, progress=False)
    full = advection_set()
    np.testing.assert_array_equal(data.is_train, np.isin(np.arange(9), [0, 2, 6, 8]))
    np.testing.assert_allclose(data.times, full.times[::2])
    np.testing.assert_allclose(data.truth_test, full.snapshots[:, ::2].astype(np.float32))
    np.testing.assert_array_equal(data.u0_test, data.truth_test[:, 0])
    np.testing.assert_allclose(data.params_train, full.params[[0, 2, 6, 8]])
    text = format_plan(spec)
    assert "data file state 16, 4 training points x 5 snapshots" in text


def test_smoke_of_a_file_spec_uses_a_few_of_its_parameters_and_snapshots(tmp_path):
    path = save_snapshot_set(
        tmp_path / "long.h5", advection_set(n_t=41), train=np.isin(np.arange(9), [0, 2, 6, 8])
    )
    spec = smoke_spec(load_spec(file_spec(tmp_path, path)))
    d = spec.data
    assert d.problem == "file" and d.file == str(path)
    assert d.train_index == (0, 2) and d.use_index == (0, 1, 2, 3)
    assert d.n_times == 11 and d.n_train() == 2
    data = load_study_data(spec.data, progress=False)
    assert data.truth_test.shape == (4, 11, 16)
    np.testing.assert_array_equal(data.is_train, [True, False, True, False])
    # the smoke spec round-trips through spec.toml
    assert spec_from_dict(tomllib.loads(spec.to_toml()), source=spec.source) == spec


# ----- a user's file: a study and mlasdi fit end to end --------------------------------------


def test_a_study_on_a_user_file_runs_through_the_smoke_path(adv_file, tmp_path, capsys):
    out = tmp_path / "out"
    # The newcomer's trap: a failed start must leave nothing that refuses the corrected rerun.
    assert (
        study_main(["run", file_spec(tmp_path, adv_file, train_index=[0]), "--out", str(out)]) == 2
    )
    assert "gives 1 training parameter(s)" in capsys.readouterr().err and not out.exists()
    spec = file_spec(tmp_path, adv_file)
    assert study_main(["run", spec, "--smoke", "--out", str(out), "--no-report"]) == 0
    text = capsys.readouterr().out
    assert "data: 4 test / 2 training parameters, 9 snapshots of 16 values" in text
    from analysis.schema import read_param_errors, read_results

    df = read_results(out)
    assert len(df) == 4 and set(df["status"]) == {"ok"}
    errors = read_param_errors(out)
    assert len(errors) == 4 * 4 and np.isfinite(errors["err"]).all()
    assert (out / "spec.toml").is_file() and (out / "data.sha256").is_file()
    # The file changes under its name: no rows from other data are added to these.
    next((out / "results").glob("*.parquet")).unlink()
    _edit(adv_file, lambda h: h["snapshots"].__setitem__((3, 2, 5), 0.5))
    assert study_main(["run", spec, "--smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} holds results made from other data than {adv_file} now holds" in err


def test_fit_on_a_user_file_with_train_points(tmp_path):
    path = save_snapshot_set(tmp_path / "adv21.h5", advection_set(n_t=21))
    out = tmp_path / "fit"
    argv = ["fit", "--data", str(path), "--train", "0.5,0.01;1.5,0.05;0.5,0.05"]
    argv += ["--stages", "2", "--iters", "5,5", "--out", str(out), "--quiet", "--no-figures"]
    assert mlasdi_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["problem"] == "file"
    split = [e["split"] for e in metrics["parameters"]]
    assert [i for i, s in enumerate(split) if s == "train"] == [0, 2, 8]
    assert all(np.isfinite(e["err_by_stage"]).all() for e in metrics["parameters"])


# ----- mlasdi data import ----------------------------------------------------------------------


def test_data_import_npz_round_trips_exactly(tmp_path, capsys):
    data = advection_set()
    train = np.isin(np.arange(9), [0, 8])
    npz = tmp_path / "arrays.npz"
    np.savez(
        npz,
        params=data.params,
        times=data.times,
        snapshots=data.snapshots,
        param_names=np.array(["c", "nu"]),
        coords=data.coords["x"],
        train=train,
    )
    out = tmp_path / "my.h5"
    assert mlasdi_main(["data", "import", "--npz", str(npz), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    back = load_snapshot_set(out)
    np.testing.assert_array_equal(back.snapshots, data.snapshots)
    np.testing.assert_array_equal(back.params, data.params)
    np.testing.assert_array_equal(back.coords["x"], data.coords["x"])
    assert back.param_names == ("c", "nu")
    with h5py.File(out) as handle:
        np.testing.assert_array_equal(handle["train"][...], train)
    assert mlasdi_main(["data", "import", "--npz", str(npz), "--out", str(out)]) == 2
    assert "exists; pass --overwrite to replace it" in capsys.readouterr().err
    np.savez(npz, params=data.params[:3, 1], times=data.times, snapshots=data.snapshots[:3])
    assert mlasdi_main(["data", "import", "--npz", str(npz), "--out", str(out), "--overwrite"]) == 0
    assert load_snapshot_set(out).param_names == ("p0",)


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"params": np.zeros((2, 1)), "times": np.arange(3.0)}, "has no array(s) ['snapshots']"),
        (
            {"params": np.zeros((2, 1)), "times": np.arange(3.0), "snapshots": np.zeros((2, 3))},
            "snapshots must have shape [n_mu, n_t, *grid] (rank >= 3)",
        ),
        (
            {"params": np.zeros((2, 1)), "times": np.arange(3.0), "snapshots": np.zeros((2, 3, 4))},
            "duplicate parameters",
        ),
    ],
)
def test_data_import_bad_arrays(tmp_path, capsys, arrays, needle):
    npz = tmp_path / "bad.npz"
    np.savez(npz, **arrays)
    out = tmp_path / "my.h5"
    assert mlasdi_main(["data", "import", "--npz", str(npz), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(npz) in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


# ----- bad files: one line, exit code 2, nothing under --out ----------------------------------


def _edit(path, fn):
    with h5py.File(path, "r+") as handle:
        fn(handle)


def _replace(name, value):
    def fn(handle):
        del handle[name]
        handle.create_dataset(name, data=value)

    return fn


def _nan_snapshot(handle):
    snaps = handle["snapshots"][...]
    snaps[3, 2, 5] = np.nan
    handle["snapshots"][...] = snaps


BAD_FILES = [
    ("junk", None, {}, "is not a readable HDF5 file"),
    ("no_times", lambda h: h.__delitem__("times"), {}, "missing datasets ['times']"),
    ("rank", _replace("snapshots", np.zeros((9, 9))), {}, "snapshots has shape (9, 9) (rank 2)"),
    ("params_rank", _replace("params", np.zeros(9)), {}, "params has shape (9,); it must be"),
    ("nan", _nan_snapshot, {}, "snapshots contain NaN or Inf (parameter indices [3])"),
    (
        "decreasing",
        _replace("times", np.array([0.0, 0.25, 0.5, 0.4, 1, 1.25, 1.5, 1.75, 2])),
        {},
        "times must be increasing, but times[3] = 0.4 follows times[2] = 0.5",
    ),
    (
        "uneven",
        _replace("times", np.array([0.0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2.5])),
        {},
        "times must be uniformly spaced",
    ),
    (
        "two_times",
        lambda h: [_replace("snapshots", h["snapshots"][:, :2])(h), _replace("times", [0, 1.0])(h)],
        {},
        "has 2 snapshots per parameter; at least 3 are needed",
    ),
    (
        "duplicate",
        _replace("params", np.array([[0.5, 0.01]] * 2 + [[float(i), 0.0] for i in range(7)])),
        {},
        "duplicate parameters [0.5, 0.01] in rows [0, 1]",
    ),
    ("not_in_file", None, {"train_params": [[0.5, 0.01], [0.7, 0.02]]}, "is not a parameter of"),
    ("one_train", None, {"train_index": [4]}, "gives 1 training parameter(s)"),
    ("row_range", None, {"train_index": [4, 9]}, "has 9 parameters (rows 0-8)"),
    ("missing", None, {}, "does not exist"),
]


def _bad_file(tmp_path, case, edit):
    path = tmp_path / f"{case}.h5"
    if case == "junk":
        path.write_bytes(b"this is not HDF5\n" * 10)
    elif case != "missing":
        save_snapshot_set(path, advection_set(), train=np.isin(np.arange(9), [0, 2, 6, 8]))
        if edit is not None:
            _edit(path, edit)
    return path


@pytest.mark.parametrize(
    ("case", "edit", "keys", "needle"), BAD_FILES, ids=[c[0] for c in BAD_FILES]
)
def test_bad_file_is_one_line_exit_2_and_nothing_under_out(
    tmp_path, capsys, case, edit, keys, needle
):
    path = _bad_file(tmp_path, case, edit)
    spec = file_spec(tmp_path, path, **keys)
    out = tmp_path / "out"
    budget = ["budget", spec, "--budget", "200", "--no-ray", "--out", str(out)]
    for command in (["run", spec, "--out", str(out)], ["plan", spec], budget):
        if case == "nan" and command[0] == "plan":
            continue  # plan reads no snapshots: values are checked when a run loads them
        assert study_main(command) == 2
        err = capsys.readouterr().err
        assert needle in err, err
        assert str(path) in err and "--overwrite" not in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not out.exists()
    # mlasdi fit --data: the same checks, the same message
    fit = ["fit", "--data", str(path), "--iters", "2,2", "--out", str(out), "--quiet"]
    if keys.get("train_index"):
        fit += ["--train-index", ",".join(str(i) for i in keys["train_index"])]
    if keys.get("train_params"):
        fit += ["--train", ";".join(",".join(str(v) for v in p) for p in keys["train_params"])]
    assert mlasdi_main(fit) == 2
    err = capsys.readouterr().err
    assert needle in err and str(path) in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def _vlasov_spec(tmp_path, file):
    raw = {
        "name": "v",
        "data": {"problem": "vlasov", "nx": 8, "nv": 8, "grid": [3, 3], "train_stride": 0.1},
        "gplasdi": {"hidden": [[4]], "latent_dims": [2], "budgets": [2]},
    }
    raw["data"]["file"] = str(file)
    path = tmp_path / "v.toml"
    path.write_text(dump_toml(raw))
    return str(path)


@pytest.mark.parametrize("kind", ["other_settings", "junk", "partial"])
def test_a_vlasov_cache_that_does_not_match_says_how_to_fix_it(tmp_path, capsys, kind):
    file = tmp_path / "cache.h5"
    if kind == "junk":
        file.write_bytes(b"junk")
        needle = "exists but is not a readable snapshot file"
    elif kind == "other_settings":
        save_snapshot_set(file, advection_set())
        needle = "holds a snapshot set with other settings or parameters than [data] asks for"
    else:
        save_snapshot_set(tmp_path / "cache.h5.partial", advection_set())
        needle = "cache.h5.partial is an interrupted generation with other settings"
    out = tmp_path / "out"
    assert study_main(["run", _vlasov_spec(tmp_path, file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "delete it or point data.file at another path" in err
    assert "--overwrite" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_non_finite_snapshots_are_refused_by_the_reader(tmp_path):
    path = _bad_file(tmp_path, "nan", _nan_snapshot)
    with pytest.raises(
        DataError, match=r"nan.h5: snapshots contain NaN or Inf \(parameter indices \[3\]\)"
    ):
        load_snapshot_set(path)
    with pytest.raises(DataError, match="does not exist"):
        import_npz(tmp_path / "none.npz", tmp_path / "x.h5")


def test_fit_names_any_registered_problem_and_checks_its_keys(tmp_path, capsys):
    out = tmp_path / "fit"
    base = ["fit", "--iters", "2,2", "--out", str(out), "--quiet"]
    assert mlasdi_main([*base, "--problem", "vlasov", "--set", "nx=9"]) == 2
    assert "nx must be even and >= 8" in capsys.readouterr().err
    assert mlasdi_main([*base, "--problem", "oscillator", "--set", "nv=8"]) == 2
    assert "data.nv does not apply to problem 'oscillator'" in capsys.readouterr().err
    assert mlasdi_main([*base, "--problem", "vlasov", "--data", str(tmp_path / "a.h5")]) == 2
    assert "--data reads a snapshot file; it does not go with --problem vlasov" in (
        capsys.readouterr().err
    )
    assert not out.exists()


@pytest.mark.parametrize("preset", ["vlasov_paper", "vlasov_quick"])
def test_vlasov_presets_train_on_the_same_points_in_the_same_order(preset):
    source = load_spec(preset).data
    params = source.parameters()
    np.testing.assert_array_equal(
        source._train_rows(), vlasov_module.training_indices(params, stride=0.05)
    )
    smoke = smoke_spec(load_spec(preset)).data
    np.testing.assert_array_equal(
        smoke._train_rows(), vlasov_module.training_indices(smoke.parameters(), stride=0.05)
    )


# ----- a new generated problem: one module (this class) and one line (the registry) ----------


@dataclasses.dataclass(frozen=True)
class AdvectionData(GeneratedGrid):
    """The advection-diffusion set as a generated, cached problem (what a solver module adds)."""

    problem: ClassVar[str] = "advdiff"
    param_names: ClassVar[tuple[str, ...]] = ("c", "nu")

    grid: tuple[int, ...] = (3, 3)
    nx: int = 16

    @property
    def n_state(self) -> int:
        return self.nx

    @property
    def n_raw_times(self) -> int:
        return 9

    def parameters(self) -> np.ndarray:
        return advection_set(*self.grid, n_x=self.nx).params

    def stored_settings(self) -> dict:
        return {"problem": "advection-diffusion", "nx": self.nx}

    def default_file(self) -> str:
        return f"advdiff_{self.nx}_{self.grid[0]}x{self.grid[1]}.h5"

    def generate_file(self, path, *, progress: bool) -> None:
        if not path.exists():
            data = advection_set(*self.grid, n_x=self.nx)
            save_snapshot_set(path, dataclasses.replace(data, settings=self.stored_settings()))


def test_a_generated_problem_is_one_class_and_one_registry_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(SOURCES, "advdiff", AdvectionData)  # the one line
    monkeypatch.chdir(tmp_path)
    raw = {"problem": "advdiff", "train_params": [[0.5, 0.01], [1.5, 0.05], [1.0, 0.03]]}
    spec_path = file_spec(tmp_path, "unused", name="gen")
    spec_raw = tomllib.loads((tmp_path / "gen.toml").read_text())
    spec_raw["data"] = raw
    spec = spec_from_dict(spec_raw)
    assert spec.data.n_train() == 3 and not (tmp_path / "data").exists()  # nothing solved yet
    data = load_study_data(spec.data, progress=False)
    assert (tmp_path / "data" / "advdiff_16_3x3.h5").is_file()
    np.testing.assert_allclose(data.params_train, [[0.5, 0.01], [1.5, 0.05], [1.0, 0.03]])
    np.testing.assert_array_equal(np.flatnonzero(data.is_train), [0, 4, 8])
    assert spec_from_dict(tomllib.loads(spec.to_toml())) == spec
    # the cached file is reused only while its settings match: another nx is refused clearly
    spec_raw["data"] = {**raw, "file": "data/advdiff_16_3x3.h5", "nx": 12}
    (tmp_path / "gen.toml").write_text(dump_toml(spec_raw))
    assert study_main(["plan", spec_path]) == 2
    err = capsys.readouterr().err
    assert "holds a snapshot set with other settings or parameters than [data] asks for" in err
    assert "grid [3, 3], nx 12" in err and "delete it or point data.file at another path" in err
