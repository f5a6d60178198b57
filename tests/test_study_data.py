"""The study data path (issue 14): a large test truth read from the snapshot file in batches
(:class:`~mlasdi.data.SnapshotReader`) gives what the in-memory path gives, and
``[data] train_time_stride`` trains on every k-th snapshot while errors are reported over all.

Tiny data: the 3 x 3 advection-diffusion file of test_data_sources (16 points), the oscillator at
40 points; budgets of 10-20 iterations; every file goes to tmp_path.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import tracemalloc

import h5py
import numpy as np
import pytest
import torch
from helpers import advection_set, assert_same_rows, eval_rows, file_spec, run_trial

from mlasdi import data as data_module
from mlasdi import engine as engine_module
from mlasdi import study_data as study_data_module
from mlasdi.cli import main as mlasdi_main
from mlasdi.config import ConfigError
from mlasdi.data import DataError, SnapshotReader, load_snapshot_set, save_snapshot_set
from mlasdi.fit import fit_rom
from mlasdi.problems import data_source
from mlasdi.rom import evaluate, stage1_rom, stage1_trainer
from mlasdi.study_data import load_study_data
from studies.plan import format_plan, plan, trials
from studies.spec import load_spec, smoke_spec, spec_from_dict, tomllib

CORNERS = [0, 2, 6, 8]


@pytest.fixture
def adv_spec(tmp_path):
    """A study of a 3 x 3 file with 17 times, using every 2nd and training on every 4th."""
    path = save_snapshot_set(
        tmp_path / "adv.h5", advection_set(n_t=17), train=np.isin(np.arange(9), CORNERS)
    )
    return load_spec(file_spec(tmp_path, path, time_stride=2, train_time_stride=2))


def _lazy(spec, monkeypatch):
    monkeypatch.setattr(study_data_module, "LAZY_TRUTH_BYTES", 0)
    return load_study_data(spec.data, progress=False)


# ----- the test truth read from the file ----------------------------------------------------


def test_lazy_study_data_equals_the_in_memory_data_and_pickles_small(adv_spec, monkeypatch):
    eager = load_study_data(adv_spec.data, progress=False)
    lazy = _lazy(adv_spec, monkeypatch)
    assert isinstance(eager.truth_test, np.ndarray)
    assert isinstance(lazy.truth_test, SnapshotReader)
    for name in ("U_train", "params_train", "times", "params_test", "is_train", "u0_test"):
        np.testing.assert_array_equal(getattr(lazy, name), getattr(eager, name), err_msg=name)
    np.testing.assert_array_equal(lazy.times_test, eager.times_test)
    # the same digest of the same file, computed from batches (a resumed study keeps its rows)
    assert lazy.fingerprint == eager.fingerprint and len(eager.fingerprint) == 64
    full = advection_set(n_t=17)
    assert lazy.truth_test.shape == eager.truth_test.shape == (9, 9, 16)
    np.testing.assert_array_equal(lazy.truth_test[0:9], eager.truth_test)
    np.testing.assert_array_equal(lazy.truth_test[3:5], full.snapshots[3:5, ::2].astype("f4"))
    np.testing.assert_array_equal(lazy.U_train, full.snapshots[CORNERS, ::4].astype("f4"))
    # the reader is a path and indices; the rest is the training set and the initial conditions
    assert len(pickle.dumps(lazy.truth_test)) < 1024
    small = lazy.U_train.nbytes + lazy.u0_test.nbytes + 4096
    assert len(pickle.dumps(lazy)) < small < len(pickle.dumps(eager))


def test_a_study_through_the_reader_gives_the_rows_of_the_in_memory_study(adv_spec, monkeypatch):
    eager = load_study_data(adv_spec.data, progress=False)
    lazy = _lazy(adv_spec, monkeypatch)
    for t in trials(adv_spec):
        want = eval_rows(run_trial(adv_spec, eager, t))
        got = eval_rows(run_trial(adv_spec, lazy, t))
        assert_same_rows(got, want)
        assert {r["row"]["status"] for r in got.values()} == {"ok"}


def test_evaluate_over_the_reader_equals_evaluate_over_the_array(adv_spec, monkeypatch):
    eager = load_study_data(adv_spec.data, progress=False)
    lazy = _lazy(adv_spec, monkeypatch)
    config = adv_spec.rom_config(hidden=(10,), latent_dim=2, seed=0, stage_iters=(15,))
    U = torch.as_tensor(eager.U_train)
    trainer = stage1_trainer(U, eager.params_train, eager.times, config)
    trainer.train(15)
    rom = stage1_rom(trainer.selected()[1], U, eager.params_train, eager.times, config)
    kwargs = {"u0": eager.u0_test, "times": eager.times_test}
    for batch in (2, 4, 9):
        over_array = evaluate(rom, eager.params_test, eager.truth_test, batch_size=batch, **kwargs)
        over_reader = evaluate(rom, lazy.params_test, lazy.truth_test, batch_size=batch, **kwargs)
        np.testing.assert_array_equal(over_reader, over_array)
        assert over_array.shape == (1, 9, 9)
        # u0 from each batch of the truth when not given: its first snapshots, the same values
        np.testing.assert_array_equal(
            evaluate(
                rom, lazy.params_test, lazy.truth_test, times=kwargs["times"], batch_size=batch
            ),
            over_array,
        )
    with pytest.raises(ValueError, match="truth has 9 times but the predictions 5"):
        evaluate(rom, eager.params_test, eager.truth_test)


def test_a_trial_whose_node_lacks_the_file_fails_with_one_line_naming_it(
    adv_spec, monkeypatch, tmp_path
):
    lazy = _lazy(adv_spec, monkeypatch)
    elsewhere = str(tmp_path / "not_here" / "adv.h5")
    moved = dataclasses.replace(
        lazy, truth_test=dataclasses.replace(lazy.truth_test, path=elsewhere)
    )
    with pytest.raises(DataError, match=f"snapshot file {elsewhere} does not exist on this node"):
        moved.check_truth()
    t = trials(adv_spec)[0]
    rows = eval_rows(run_trial(adv_spec, moved, t))
    assert sorted(rows) == t.evaluation_ids
    for r in rows.values():
        message = r["row"]["message"]
        assert r["row"]["status"] == "failed" and elsewhere in message
        assert "same path on every node" in message and "\n" not in message


def test_a_bad_value_is_found_by_the_batched_check(adv_spec, monkeypatch):
    with h5py.File(adv_spec.data.file, "r+") as handle:
        handle["snapshots"][7, 15, 3] = np.inf  # at a time the study does not even use
    with pytest.raises(DataError, match=r"adv.h5: snapshots contain NaN or Inf \(parameter "):
        load_study_data(adv_spec.data, progress=False)
    monkeypatch.setattr(data_module, "SCAN_BATCH_BYTES", 1)  # one parameter per batch
    with pytest.raises(DataError, match=r"NaN or Inf \(parameter indices \[7\]\)"):
        _lazy(adv_spec, monkeypatch)


def test_time_slices_of_the_file_reader(adv_spec):
    full = advection_set(n_t=17)
    part = load_snapshot_set(adv_spec.data.file, indices=[5, 1], time_slice=slice(None, None, 4))
    np.testing.assert_array_equal(part.snapshots, full.snapshots[[5, 1], ::4])
    np.testing.assert_allclose(part.times, full.times[::4])


def test_a_batch_of_the_reader_holds_little_more_than_its_float32_values(tmp_path):
    # A float64 file (seed 0: 6 parameters x 50 times x 2000 values), read as the float32 batches
    # that evaluate takes. numpy reports its buffers to tracemalloc: a batch of rows 1-4 (in
    # order, every time and every 2nd) allocates at most 1.3 times its float32 bytes (the
    # batch and the finiteness check's booleans), not a float64 copy and a reordered one beside
    # it (4 times), and equals the float64 values rounded to float32.
    rng = np.random.default_rng(0)
    full = rng.standard_normal((6, 50, 2000))
    snapshots = data_module.SnapshotSet(
        params=np.arange(6.0)[:, None],
        times=np.linspace(0.0, 1.0, 50),
        snapshots=full,
        param_names=("a",),
    )
    path = save_snapshot_set(tmp_path / "f64.h5", snapshots)
    for stride in (1, 2):
        reader = SnapshotReader(str(path), tuple(range(6)), stride, 50 // stride, (2000,))
        reader[0:1]  # h5py's own first-read allocations
        tracemalloc.start()
        try:
            batch = reader[1:5]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert batch.dtype == np.float32
        np.testing.assert_array_equal(batch, full[1:5, ::stride].astype(np.float32))
        assert peak <= 1.3 * batch.nbytes
    # Rows out of order and repeated are still read each once and reordered.
    np.testing.assert_array_equal(
        load_snapshot_set(path, indices=[4, 1, 4], dtype=np.float32).snapshots,
        full[[4, 1, 4]].astype(np.float32),
    )


# ----- train_time_stride ---------------------------------------------------------------------


def _oscillator(**data) -> dict:
    return {
        "name": "s",
        "seeds": [0],
        "data": {"problem": "oscillator", "nx": 40, "n_t": 21, "grid": [3], **data},
        "gplasdi": {"hidden": [[12]], "latent_dims": [2], "budgets": [10, 20]},
        "mlasdi": {"hidden": [[8]], "latent_dims": [2], "budgets": [[10, 10]]},
        "training": {"gp": {"n_restarts": 0}},
    }


def _traced(spec, data, monkeypatch):
    """The rows of every trial, the stage-1 loss histories and the errors each evaluation saw."""
    histories, errors = [], []

    def trainer(*args, **kwargs):
        trainer = stage1_trainer(*args, **kwargs)
        histories.append(trainer)
        return trainer

    def evaluate_all(*args, **kwargs):
        errors.append(evaluate(*args, **kwargs))
        return errors[-1]

    monkeypatch.setattr(engine_module, "stage1_trainer", trainer)
    monkeypatch.setattr(study_data_module, "evaluate", evaluate_all)
    rows = {}
    for t in trials(spec):
        rows |= eval_rows(run_trial(spec, data, t))
    return rows, [h.history.clone() for h in histories], errors


def test_train_time_stride_trains_as_time_stride_and_reports_every_time(monkeypatch):
    coarse = spec_from_dict(_oscillator(time_stride=2))
    fine = spec_from_dict(_oscillator(train_time_stride=2))
    a, b = load_study_data(coarse.data), load_study_data(fine.data)
    np.testing.assert_array_equal(b.U_train, a.U_train)
    np.testing.assert_array_equal(b.times, a.times)
    assert b.times.size == 11 and b.times_test.size == b.truth_test.shape[1] == 21
    np.testing.assert_array_equal(b.times_test[::2], b.times)
    rows_a, losses_a, errors_a = _traced(coarse, a, monkeypatch)
    rows_b, losses_b, errors_b = _traced(fine, b, monkeypatch)
    assert len(losses_a) == len(losses_b) == 2
    for la, lb in zip(losses_a, losses_b, strict=True):
        np.testing.assert_array_equal(lb.numpy(), la.numpy())  # the same training
    assert sorted(rows_b) == sorted(rows_a)
    for ea, eb in zip(errors_a, errors_b, strict=True):
        assert ea.shape[2] == 11 and eb.shape[2] == 21  # errors over every test level
        np.testing.assert_allclose(eb[:, :, ::2], ea, rtol=1e-5, atol=0)  # same models
    # GPLaSDI at 20 iterations, fitted directly on the training snapshots; its r(mu) over all 21
    # levels from its predictions at the 21 times, without evaluate's times argument.
    from mlasdi.data import SnapshotSet

    train = SnapshotSet(
        params=b.params_train, times=b.times, snapshots=b.U_train, param_names=("A",)
    )
    config = fine.rom_config(hidden=(12,), latent_dim=2, seed=0, stage_iters=(20,))
    rom = dataclasses.replace(fit_rom(train, config, device="cpu").rom, times=b.times_test)
    u = b.truth_test.astype(np.float64)
    pred = rom.predict(b.params_test, b.u0_test).numpy().astype(np.float64)
    r = (np.linalg.norm(u - pred, axis=2) / np.linalg.norm(u, axis=2)).max(axis=1)
    (row,) = [p for p in rows_b.values() if p["row"]["stage_iters"] == [20]]
    np.testing.assert_allclose(row["param_err"], r, rtol=1e-5, atol=0)


def test_train_time_stride_is_checked_planned_and_recorded(tmp_path, capsys):
    for value, needle in ((0, "an integer >= 1, got 0"), (1.5, "of type int, got 1.5")):
        with pytest.raises(ConfigError, match=f"^data.train_time_stride must be {needle}$"):
            data_source({"problem": "oscillator", "train_time_stride": value})
    with pytest.raises(ConfigError) as info:
        data_source({"problem": "oscillator", "n_t": 21, "time_stride": 2, "train_time_stride": 6})
    assert str(info.value) == (
        "data.train_time_stride = 6 leaves 2 of the 11 snapshots a study uses for training; "
        "need at least 3"
    )
    coarse = spec_from_dict(_oscillator(time_stride=2))
    fine = spec_from_dict(_oscillator(train_time_stride=2))
    assert [p.shared for p in plan(fine)] == [p.shared for p in plan(coarse)]
    assert "2 training points x 11 snapshots (errors over 21)" in format_plan(fine)
    assert "2 training points x 11 snapshots\n" in format_plan(coarse)
    assert fine.to_dict()["data"]["train_time_stride"] == 2
    assert spec_from_dict(tomllib.loads(fine.to_toml())) == fine
    assert smoke_spec(fine).data.train_time_stride == 1
    # mlasdi fit trains on what it tests on: the key is refused there, not ignored
    fit = ["fit", "--set", "train_time_stride=2", "--out", str(tmp_path / "fit"), "--quiet"]
    assert mlasdi_main(fit) == 2
    err = capsys.readouterr().err
    assert "data.train_time_stride is for studies" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "fit").exists()
    # a latent size needs r + 1 training snapshots, not test ones
    raw = _oscillator(n_t=9, train_time_stride=4)
    raw["gplasdi"]["latent_dims"] = [3]
    with pytest.raises(ValueError, match="needs at least 4 snapshots per training parameter"):
        spec_from_dict(raw)


def test_the_gplasdi_burgers_preset_trains_on_every_10th_level_and_tests_on_all():
    d = load_spec("burgers1d_gplasdi").data
    assert (d.time_stride, d.train_time_stride, d.n_times, d.n_train_times) == (1, 10, 1001, 101)


def test_fit_on_a_file_read_in_batches_gives_the_in_memory_metrics(tmp_path, monkeypatch):
    # mlasdi fit --data on the 3 x 3 file (4 corner training points, 17 times):
    # its test truth loaded whole, then read from the file in batches (the study's lazy path:
    # load_study_data, the whole file never read into memory at once): the same metrics.
    path = save_snapshot_set(
        tmp_path / "adv.h5", advection_set(n_t=17), train=np.isin(np.arange(9), CORNERS)
    )
    reads = []
    reader_getitem = SnapshotReader.__getitem__

    def counting(self, key):
        reads.append(key)
        return reader_getitem(self, key)

    monkeypatch.setattr(SnapshotReader, "__getitem__", counting)
    metrics = {}
    for name, lazy_bytes in (("memory", study_data_module.LAZY_TRUTH_BYTES), ("file", 0)):
        monkeypatch.setattr(study_data_module, "LAZY_TRUTH_BYTES", lazy_bytes)
        out = tmp_path / name
        args = ["fit", "--data", str(path), "--iters", "10,10"]
        assert mlasdi_main([*args, "--out", str(out), "--quiet", "--no-figures"]) == 0
        metrics[name] = json.loads((out / "metrics.json").read_text())["parameters"]
    assert reads  # the second fit read its truth through the reader
    assert len(metrics["file"]) == 9
    assert metrics["file"] == metrics["memory"]
