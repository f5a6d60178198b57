"""``mlasdi fit --sampling greedy``: stage 1 grows its training set from the candidates (the test
grid, or a snapshot file's trajectories), metrics.json records the picks, and a saved ROM gives
the GP-sample spread of its predictions (the README's example)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mlasdi.cli import main
from mlasdi.config import (
    AutoencoderConfig,
    GPConfig,
    ResidualStageConfig,
    ROMConfig,
    SamplingConfig,
    Stage1Config,
)
from mlasdi.data import SnapshotSet, save_snapshot_set
from mlasdi.fit import fit_accepted_rom
from mlasdi.greedy import greedy_start
from mlasdi.problems import oscillator
from mlasdi.problems.oscillator import OscillatorData
from mlasdi.rom import MultiStageROM, residual_stage_data
from mlasdi.study_data import load_study_data

ROOT = Path(__file__).resolve().parents[1]
# The oscillator on 7 amplitudes in [1.0, 1.4] (40 points x 21 times), a tiny network.
SMALL = ["--set", "nx=40", "--set", "n_t=21", "--set", "grid=[7]", "--hidden", "12"]
SMALL += ["--latent", "2", "--threads", "1", "--no-figures"]
GRID = np.linspace(1.0, 1.4, 7)
# Rounds every 10 of stage 1's 40 iterations, up to 5 points: corners 1.0 and 1.4, then a pick
# after iterations 10, 20 and 30 (none after 40: stage 1's last iteration).
GREEDY = ["--sampling", "greedy", "--every", "10", "--max-points", "5", "--n-samples", "4"]


def _fit(out: Path, *extra: str) -> int:
    return main(["fit", "--stages", "2", "--iters", "40,20", *SMALL, *extra, "--out", str(out)])


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def greedy_runs(tmp_path_factory):
    """Two greedy fits with seed 0 (the first with progress output, captured) and metrics."""
    import contextlib
    import io

    base = tmp_path_factory.mktemp("greedy")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert _fit(base / "a", *GREEDY) == 0
    assert _fit(base / "b", *GREEDY, "--quiet") == 0
    return base / "a", base / "b", stdout.getvalue()


def test_greedy_fit_picks_grid_points_at_the_stated_iterations(greedy_runs):
    metrics = _metrics(greedy_runs[0])
    assert metrics["sampling"]["strategy"] == "greedy"
    assert metrics["sampling"]["last_round_iter"] == 40  # default: stage 1's iterations
    assert metrics["initial_params"] == [[1.0], [1.4]]
    picks = metrics["picks"]
    assert [p["iteration"] for p in picks] == [10, 20, 30]
    picked = np.array([p["params"][0] for p in picks])
    # Points of the candidate grid, none twice, none a corner.
    rows = np.abs(picked[:, None] - GRID[None, :]).argmin(1)
    np.testing.assert_allclose(picked, GRID[rows], rtol=0, atol=1e-9)
    assert len(set(rows)) == 3 and not {0, 6} & set(rows)
    assert metrics["n_fom_solves"] == 2 + 3
    assert metrics["round_time_s"] >= metrics["fom_time_s"] >= 0
    assert metrics["round_time_s"] > 0
    # The train split is the set stage 1 ended with.
    split = {round(e["params"][0], 9): e["split"] for e in metrics["parameters"]}
    trained = {round(x, 9) for x in [1.0, 1.4, *picked]}
    assert {a for a, s in split.items() if s == "train"} == trained
    assert len(split) == 7


def test_greedy_fit_is_reproducible_from_its_seed(greedy_runs):
    a, b = (_metrics(d) for d in greedy_runs[:2])
    assert a["picks"] == b["picks"]
    assert [e["err_by_stage"] for e in a["parameters"]] == [
        e["err_by_stage"] for e in b["parameters"]
    ]


def test_each_round_prints_one_line_and_quiet_prints_none(greedy_runs, capsys):
    printed = greedy_runs[2]
    lines = [line for line in printed.splitlines() if line.startswith("greedy round")]
    picks = _metrics(greedy_runs[0])["picks"]
    assert len(lines) == 3
    for line, pick, n in zip(lines, picks, (3, 4, 5), strict=True):
        assert line.startswith(
            f"greedy round at iteration {pick['iteration']}: picked A={pick['params'][0]:.6g} "
            f"({n} points; round "
        )
    assert "greedy sampling: 5 full-order solves (2 initial, 3 picked)" in printed
    # The same with --quiet (one stage, one round): no round line.
    out = greedy_runs[0].parent / "quiet"
    args = ["fit", "--stages", "1", "--iters", "20", *SMALL, *GREEDY, "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert [p["iteration"] for p in _metrics(out)["picks"]] == [10]
    assert "greedy round" not in capsys.readouterr().out


def test_residual_stage_trains_on_the_set_stage_1_ended_with(greedy_runs):
    # The saved GP holds the 5 points, and the residual scale e1 = std(U - stage-1 prediction)
    # is that of the 5 full-order trajectories (2 would give another).
    out = greedy_runs[0]
    metrics = _metrics(out)
    points = np.array([[1.0], [1.4], *(p["params"] for p in metrics["picks"])])
    rom = MultiStageROM.load(out / "rom", device="cpu")
    gp_points = rom.gp.train_inputs * rom.gp.input_scale + rom.gp.input_mean
    np.testing.assert_allclose(gp_points, points, rtol=0, atol=1e-9)
    stage1 = MultiStageROM(
        rom.autoencoder, rom.gp, rom.times, rom.config, latent_bound=rom.latent_bound
    )
    U = oscillator.snapshot_set(points[:, 0], n_x=40, n_t=21).snapshots.astype(np.float32)
    _, _, scale = residual_stage_data(stage1, torch.from_numpy(U), points)
    assert scale == pytest.approx(rom.scales[0], rel=1e-5)
    _, _, first_two = residual_stage_data(stage1, torch.from_numpy(U[:2]), points[:2])
    assert first_two != pytest.approx(rom.scales[0], rel=1e-3)


def test_coef_std_rounds_stop_before_the_last_round_iteration(tmp_path):
    out = tmp_path / "fit"
    extra = ["--sampling", "greedy", "--every", "10", "--criterion", "coef_std"]
    assert _fit(out, *extra, "--last-round-iter", "25", "--quiet") == 0
    metrics = _metrics(out)
    assert [p["iteration"] for p in metrics["picks"]] == [10, 20]
    assert metrics["sampling"]["criterion"] == "coef_std"
    assert metrics["n_fom_solves"] == 4


def _pulse_file(path: Path, drop_corner: bool = False) -> Path:
    """The README's travelling pulse on a 5 x 5 (c, w) grid, 41 times x 64 points."""
    c, w = np.meshgrid(np.linspace(0.7, 0.9, 5), np.linspace(0.9, 1.1, 5), indexing="ij")
    P = np.stack([c.ravel(), w.ravel()], axis=1)
    if drop_corner:
        P = P[1:]
    t = np.linspace(0.0, 2.0, 41)
    x = np.linspace(-4.0, 6.0, 64)
    U = np.exp(-((x - P[:, :1, None] * t[None, :, None]) ** 2) / (2 * P[:, 1:, None] ** 2))
    data = SnapshotSet(params=P, times=t, snapshots=U, param_names=("c", "w"), coords={"x": x})
    return save_snapshot_set(path, data)


def test_offline_greedy_fit_picks_the_files_trajectories(tmp_path):
    # Two picks a round, each at least 0.3 (unit box) from the training points and the other
    # pick: without that, this seed's first round picks (0.7, 0.95), 0.25 from a corner.
    path = _pulse_file(tmp_path / "pulse.h5")
    out = tmp_path / "fit"
    args = ["fit", "--data", str(path), "--train-index", "0,24", "--stages", "1"]
    args += ["--iters", "30", "--hidden", "16", "--latent", "3", "--threads", "1"]
    args += ["--sampling", "greedy", "--every", "10", "--n-samples", "4"]
    args += ["--points-per-round", "2", "--min-distance", "0.3"]
    assert main([*args, "--out", str(out), "--quiet", "--no-figures"]) == 0
    metrics = _metrics(out)
    file_points = {
        (round(c, 9), round(w, 9))
        for c, w in np.array([e["params"] for e in metrics["parameters"]])
    }
    assert len(file_points) == 25
    corners = [[0.7, 0.9], [0.7, 1.1], [0.9, 0.9], [0.9, 1.1]]
    np.testing.assert_allclose(metrics["initial_params"], corners, rtol=0, atol=1e-12)
    picks = metrics["picks"]
    assert [p["iteration"] for p in picks] == [10, 10, 20, 20]
    picked = np.array([p["params"] for p in picks])
    assert {(round(c, 9), round(w, 9)) for c, w in picked} <= file_points
    unit = (np.array([*corners, *picked]) - [0.7, 0.9]) / 0.2
    gaps = np.sqrt(((unit[:, None] - unit[None, :]) ** 2).sum(-1))
    for k in range(4, 8):
        assert gaps[k, :k].min() >= 0.3 - 1e-12, picked
    assert metrics["n_fom_solves"] == 8
    assert sum(e["split"] == "train" for e in metrics["parameters"]) == 8


def test_offline_corners_missing_from_the_file_are_one_line_exit_2(tmp_path, capsys):
    path = _pulse_file(tmp_path / "pulse.h5", drop_corner=True)
    out = tmp_path / "fit"
    args = ["fit", "--data", str(path), "--train-index", "0,23", "--stages", "1", "--iters", "5"]
    args += ["--sampling", "greedy", "--out", str(out), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlasdi: error: parameter [0.7, 0.9] is not in the snapshot file")
    assert "start from the data's training points instead" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sampling", "greedy", "--every", "0"], "--every must be an integer >= 1, got 0"),
        (
            ["--sampling", "greedy", "--criterion", "foo"],
            "--criterion must be one of ('max_std', 'coef_std'), got 'foo'",
        ),
        (["--sampling", "sometimes"], "--sampling must be one of ('fixed', 'greedy')"),
        (["--sampling", "greedy", "--min-distance", "1.5"], "--min-distance must be in [0, 1)"),
        (["--sampling", "greedy", "--n-samples", "1"], "--n-samples must be an integer >= 2"),
        (
            ["--every", "10", "--n-samples", "4"],
            "--every, --n-samples: only with --sampling greedy",
        ),
    ],
)
def test_bad_sampling_flags_are_one_line_exit_2_nothing_written(flags, message, tmp_path, capsys):
    out = tmp_path / "fit"
    assert main(["fit", "--iters", "5,5", *flags, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mlasdi: error: {message}")
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_fit_accepted_rom_grows_stage_1_with_the_sampler():
    # fit_accepted_rom with the greedy sampler: stage 1 grows to 4 points (corners, then picks
    # after iterations 10 and 20), the ROM's GP holds all of them, and the residual stage is
    # decided on the grown set's split.
    source = OscillatorData(nx=40, n_t=21, grid=(7,))
    data = load_study_data(source, progress=False)
    config = ROMConfig(
        autoencoder=AutoencoderConfig(hidden=(12,), latent_dim=2),
        stage1=Stage1Config(iters=30),
        residual_stages=(ResidualStageConfig(hidden=(12,), iters=10),),
        gp=GPConfig(n_restarts=0),
        seed=3,
    )
    sampling = SamplingConfig(strategy="greedy", every=10, max_points=4, n_samples=4)
    start = greedy_start(sampling, data, source, seed=3)
    train = SnapshotSet(
        params=start.params, times=data.times, snapshots=start.U, param_names=("A",)
    )
    fit, decisions = fit_accepted_rom(train, config, every=5, plugins=[start.sampler], device="cpu")
    assert [p.iteration for p in start.sampler.picks] == [10, 20]
    points = np.array([*start.params, *(p.params for p in start.sampler.picks)])
    gp = fit.rom.gp
    np.testing.assert_allclose(gp.train_inputs * gp.input_scale + gp.input_mean, points, atol=1e-9)
    assert len(decisions) == 1 and np.isfinite(decisions[0].err_without)
    assert 0 < decisions[0].stop_iteration <= 10


def test_the_readme_spread_example_runs_on_a_saved_rom(tmp_path, monkeypatch):
    # The README's example loads the ROM of its greedy fit command: made here with a tiny
    # network and 2 + 2 iterations, then the example runs as written.
    text = (ROOT / "README.md").read_text()
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "predict_spread(" in b
    )
    rom_dir = re.search(r'MultiStageROM\.load\("([^"]+)"', block).group(1)
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--problem", "oscillator", "--iters", "2,2", "--hidden", "12", "--latent", "2"]
    args += ["--threads", "1", "--quiet"]
    assert main([*args, "--no-figures", "--out", str(Path(rom_dir).parent)]) == 0
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    spread, U = namespace["spread"], namespace["U"]
    n = namespace["params"].shape[0]
    assert U.shape == spread.mean.shape == spread.std.shape == (n, 201, 600)
    assert spread.quantiles.shape == (3, n, 201, 600)
    low, median, high = spread.quantiles
    assert bool((low <= median).all() and (median <= high).all())
    assert bool(torch.isfinite(spread.mean).all())
