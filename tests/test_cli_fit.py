"""``mlasdi fit`` end to end on the paper's oscillator (600 x 201), with tiny iteration budgets."""

import json
import math

import numpy as np
import pytest
import torch

from mlasdi.cli import FIT_ARCHITECTURES, fit_config, main
from mlasdi.config import to_dict
from mlasdi.problems import oscillator
from mlasdi.rom import MultiStageROM, evaluate
from mlasdi.train import ResidualTrainer, Stage1Trainer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fit_dir(tmp_path_factory):
    """OUT of ``mlasdi fit --iters 30,30 --quiet`` (2 stages, seed 0), run once for this module."""
    out = tmp_path_factory.mktemp("fit")
    assert main(["fit", "--iters", "30,30", "--out", str(out), "--quiet"]) == 0
    return out


def test_fit_writes_metrics_with_the_documented_schema(fit_dir):
    metrics = json.loads((fit_dir / "metrics.json").read_text())
    assert metrics["problem"] == "oscillator"
    assert metrics["seed"] == 0
    assert metrics["config"] == to_dict(fit_config(2, [30, 30], 0, FIT_ARCHITECTURES["oscillator"]))
    assert metrics["config"]["autoencoder"]["hidden"] == [200, 20]
    assert len(metrics["stage_times_s"]) == 2 and all(t > 0 for t in metrics["stage_times_s"])
    # A fixed training set: its two points are the full-order solves, nothing picked.
    assert metrics["sampling"] == {"strategy": "fixed"}
    assert metrics["initial_params"] == [[1.0], [1.4]] and metrics["picks"] == []
    assert metrics["n_fom_solves"] == 2
    assert metrics["round_time_s"] == metrics["fom_time_s"] == 0.0
    entries = metrics["parameters"]
    assert [e["params"] for e in entries] == [[1.0], [1.2], [1.4]]
    split = {e["params"][0]: e["split"] for e in entries}
    assert split == {1.0: "train", 1.2: "test", 1.4: "train"}
    for entry in entries:
        assert len(entry["err_by_stage"]) == 2
        assert all(math.isfinite(e) and e > 0 for e in entry["err_by_stage"])
    with np.load(fit_dir / "loss_history.npz", allow_pickle=False) as histories:
        assert histories["stage1"].shape == (30, 4) and histories["stage2"].shape == (30, 1)


def test_fit_draws_the_figures(fit_dir):
    for name in ("error_vs_time.png", "snapshots.png", "loss_history.png"):
        data = (fit_dir / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert len(data) > 1000, name


def test_saved_rom_reproduces_the_recorded_errors(fit_dir):
    rom = MultiStageROM.load(fit_dir / "rom", device="cpu")
    assert rom.n_stages == 2
    data = oscillator.snapshot_set()
    errors = evaluate(rom, data.params, data.flat_snapshots()).max(-1)  # [n_stages, n_mu]
    recorded = [
        e["err_by_stage"] for e in json.loads((fit_dir / "metrics.json").read_text())["parameters"]
    ]
    np.testing.assert_allclose(errors.T, recorded, rtol=1e-6)


def test_bad_iters_text_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--iters", "10,x", "--out", "unused"])
    assert exit_info.value.code == 2
    assert "--iters must look like 10000,10000, got '10,x'" in capsys.readouterr().err


def test_non_positive_iters_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--iters", "10,0", "--out", "unused"])
    assert exit_info.value.code == 2
    assert "--iters must be positive" in capsys.readouterr().err


def test_iters_must_match_the_number_of_stages(capsys, tmp_path):
    assert main(["fit", "--stages", "2", "--iters", "100", "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "mlasdi: error: --iters gives 1 budgets for --stages 2" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stages", ["0", "-1"])
def test_non_positive_stages_is_a_clear_error(capsys, tmp_path, stages):
    # Without --iters, --stages 0 gives zero budgets and must fail with a message, not a traceback.
    try:
        code = main(["fit", "--stages", stages, "--out", str(tmp_path), "--quiet"])
    except SystemExit as exc:
        code = exc.code
    assert code not in (0, None)
    assert "--stages" in capsys.readouterr().err


def test_oscillator_reference_configuration_is_the_papers_with_cosine_decay():
    # The reference: AE 600-200-20-10 softplus, residual 10-20-200-600 sine (kappa 1)
    # then tanh, 10,000 + 10,000 Adam iterations at lr 1e-3, beta1 0.1, beta2 1e-3; ours adds
    # a cosine learning-rate decay to every stage (README).
    config = fit_config(2, [10_000, 10_000], 4, FIT_ARCHITECTURES["oscillator"])
    ae, s1, (s2,) = config.autoencoder, config.stage1, config.residual_stages
    assert (ae.hidden, ae.latent_dim, ae.activation) == ((200, 20), 10, "softplus")
    assert (s1.iters, s1.lr, s1.beta1, s1.beta2, s1.lr_schedule) == (
        10_000,
        1e-3,
        0.1,
        1e-3,
        "cosine",
    )
    assert (s2.hidden, s2.kappa, s2.activation) == ((20, 200), 1.0, "tanh")
    assert (s2.iters, s2.lr, s2.lr_schedule) == (10_000, 1e-3, "cosine")
    assert config.seed == 4


def test_a_diverging_fit_is_one_line_and_exit_code_1(monkeypatch, capsys, tmp_path):
    # Stage 1's loss made NaN from the first iteration: the trainer's own finiteness check stops
    # it, and the command reports that in one line (stage, iteration, what to try), writing
    # nothing.
    original = Stage1Trainer.gradients

    def nan_loss(self):
        return original(self) * torch.nan

    monkeypatch.setattr(Stage1Trainer, "gradients", nan_loss)
    out = tmp_path / "fit"
    code = main(
        ["fit", "--problem", "oscillator", "--stages", "2", "--iters", "20,20", "--out", str(out)]
        + ["--no-figures", "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("mlasdi: stage 1 of 2 diverged: loss is not finite at iteration 20:")
    assert "(nothing written); try another --seed" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_diverging_residual_stage_keeps_stage_1(monkeypatch, capsys, tmp_path):
    # Stage 2's loss made NaN: stage 1 finished, so its ROM, metrics and loss history are
    # written (metrics.json names the divergence) and the line says so.
    original = ResidualTrainer.gradients

    def nan_loss(self):
        return original(self) * torch.nan

    monkeypatch.setattr(ResidualTrainer, "gradients", nan_loss)
    out = tmp_path / "fit"
    code = main(
        ["fit", "--stages", "2", "--iters", "20,20", "--out", str(out), "--no-figures", "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("mlasdi: stage 2 of 2 diverged: loss is not finite at iteration 20:")
    assert f"(stage 1 kept in {out}); try another --seed, a smaller --residual-kappa" in err
    assert len(err.strip().splitlines()) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["diverged"].startswith("stage 2 of 2 diverged")
    assert [len(e["err_by_stage"]) for e in metrics["parameters"]] == [1, 1, 1]
    assert MultiStageROM.load(out / "rom", device="cpu").n_stages == 1
    with np.load(out / "loss_history.npz", allow_pickle=False) as histories:
        assert list(histories) == ["stage1"] and histories["stage1"].shape == (20, 4)


def test_cuda_on_a_machine_without_it_is_one_line_exit_2_nothing_written(
    monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "fit"
    code = main(["fit", "--device", "cuda", "--iters", "5,5", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mlasdi: error: --device cuda: CUDA is not available on this machine")
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_bug_is_a_traceback_not_a_user_error(monkeypatch, tmp_path):
    # A ValueError that no input check raised is a bug: it must propagate, not become "error:".
    def broken(*args, **kwargs):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr("mlasdi.study_data.evaluate", broken)
    with pytest.raises(ValueError, match="an internal inconsistency"):
        main(["fit", "--stages", "1", "--iters", "5", "--out", str(tmp_path / "f"), "--quiet"])


@pytest.mark.parametrize(
    ("problem", "hidden", "latent", "activation"),
    [
        ("oscillator", [200, 20], 10, "softplus"),
        ("burgers1d", [100], 5, "sigmoid"),
        ("vlasov", [50], 5, "softplus"),
    ],
)
def test_architecture_defaults_per_problem(
    monkeypatch, tmp_path, problem, hidden, latent, activation
):
    # The configuration fit builds, stopped before any data are made: defaults per problem,
    # residual widths mirrored.
    seen = {}

    def capture(*args):
        seen["config"] = fit_config(*args)
        raise SystemExit(0)

    monkeypatch.setattr("mlasdi.cli.fit_config", capture)
    args = ["fit", "--problem", problem, "--out", "unused", "--quiet", "--iters", "5,5"]
    with pytest.raises(SystemExit):
        main(args + ([] if problem == "oscillator" else ["--set", f"file={tmp_path / 'd.h5'}"]))
    config = seen["config"]
    assert list(config.autoencoder.hidden) == hidden
    assert (config.autoencoder.latent_dim, config.autoencoder.activation) == (latent, activation)
    assert list(config.residual_stages[0].hidden) == hidden[::-1]


def test_architecture_flags_reach_the_trained_rom(tmp_path):
    out = tmp_path / "fit"
    args = ["fit", "--iters", "5,5", "--out", str(out), "--quiet", "--no-figures"]
    flags = ["--hidden", "30", "--latent", "3", "--activation", "tanh", "--residual-hidden"]
    flags += ["7,9", "--residual-kappa", "2.5", "--residual-activation", "elu"]
    assert main(args + flags) == 0
    config = json.loads((out / "metrics.json").read_text())["config"]
    ae, (residual,) = config["autoencoder"], config["residual_stages"]
    assert ae == {"hidden": [30], "latent_dim": 3, "activation": "tanh"}
    assert (residual["hidden"], residual["kappa"], residual["activation"]) == ([7, 9], 2.5, "elu")
    rom = MultiStageROM.load(out / "rom", device="cpu")
    # 600 -> 30 -> 3 -> 30 -> 600 autoencoder and 3 -> 7 -> 9 -> 600 residual decoder
    expected = (600 * 30 + 30) + (30 * 3 + 3) + (3 * 30 + 30) + (30 * 600 + 600)
    expected += (3 * 7 + 7) + (7 * 9 + 9) + (9 * 600 + 600)
    assert rom.n_model_params == expected
