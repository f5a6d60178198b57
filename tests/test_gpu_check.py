"""benchmarks/gpu_check.py on the CPU: its arithmetic, and the JSON a --smoke run writes."""

import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlasdi.nn import Autoencoder, ResidualDecoder, count_parameters
from studies.plan import Trial
from studies.spec import load_spec

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize(
    ("hidden", "latent", "n_state", "n_snapshots"), [((50,), 5, 4096, 6275), ((12, 7), 3, 40, 9)]
)
def test_flop_floor_is_six_per_snapshot_and_weight_of_the_built_networks(
    gpu_check, hidden, latent, n_state, n_snapshots
):
    # 6 x snapshots x trainable scalars (weights and biases), the scalars counted on the
    # networks mlasdi builds: the autoencoder for stage 1 (vlasov_paper's mLaSDI: 414301, the
    # issue's "about 15 GFLOP" per step on 25 x 251 snapshots), one residual decoder per
    # residual stage.
    trial = Trial("paper", "mlasdi", 0, hidden, latent, 0, ((25000, 25000),), (50,))
    stage1 = count_parameters(Autoencoder(n_state, hidden, latent))
    residual = count_parameters(ResidualDecoder(latent, (50,), n_state))
    assert gpu_check.iteration_flop_floor("stage1", trial, n_state, n_snapshots) == (
        6 * n_snapshots * stage1
    )
    assert gpu_check.iteration_flop_floor("residual", trial, n_state, n_snapshots) == (
        6 * n_snapshots * residual
    )
    with pytest.raises(ValueError, match="unknown step kind 'stage2'"):
        gpu_check.iteration_flop_floor("stage2", trial, n_state, n_snapshots)


def test_projection_is_within_graham_bound_of_the_best_assignment(gpu_check):
    # Seed 8: 7 jobs of 1-20 s on 2 and 3 GPUs. The best makespan by trying every assignment;
    # longest-first onto the least loaded GPU is at least that and at most (4/3 - 1/(3 m)) times
    # it (Graham 1969); gpu_s is the sum; shared_s the larger of the fraction-weighted load per
    # GPU and the longest job.
    rng = np.random.default_rng(8)
    seconds = rng.uniform(1.0, 20.0, 7)
    fractions = rng.choice([0.25, 0.5, 1.0], 7)
    jobs = list(zip(seconds.tolist(), fractions.tolist(), strict=True))
    for n_gpus in (2, 3):
        best = min(
            max(seconds[np.array(gpus) == g].sum() for g in range(n_gpus))
            for gpus in itertools.product(range(n_gpus), repeat=len(jobs))
        )
        result = gpu_check.project_wall_time(jobs, n_gpus)
        assert best - 1e-9 <= result["serial_s"] <= (4 / 3 - 1 / (3 * n_gpus)) * best + 1e-9
        assert result["gpu_s"] == pytest.approx(seconds.sum(), rel=1e-15)
        expected_shared = max((seconds * fractions).sum() / n_gpus, seconds.max())
        assert result["shared_s"] == pytest.approx(expected_shared, rel=1e-15)


def test_projection_of_a_made_up_table(gpu_check):
    # Trials of 10 s (whole GPU), 6 s and 6 s (a quarter each), 4 s (whole GPU).
    # 2 GPUs, longest first onto the least loaded: [10], [6], [6+6], [10+4] -> 14 s.
    # Shared lower bound: max((10 + 1.5 + 1.5 + 4) / 2, 10) = 10 s; on 1 GPU max(17, 10) = 17 s.
    jobs = [(10.0, 1.0), (6.0, 0.25), (6.0, 0.25), (4.0, 1.0)]
    assert gpu_check.project_wall_time(jobs, 2) == {
        "gpu_s": 26.0,
        "serial_s": 14.0,
        "shared_s": 10.0,
    }
    assert gpu_check.project_wall_time(jobs, 1) == {
        "gpu_s": 26.0,
        "serial_s": 26.0,
        "shared_s": 17.0,
    }
    with pytest.raises(ValueError, match="n_gpus must be >= 1"):
        gpu_check.project_wall_time(jobs, 0)


def test_trial_seconds_use_the_plan_iteration_counts(gpu_check):
    # vlasov_paper: 20 GPLaSDI trials train stage 1 to 100k; 20 mLaSDI trials train stage 1 to
    # 75k and residual runs of 50k + 50k + 25k. At 1 ms per stage-1 and 2 ms per residual
    # iteration: 20 * 100 s + 20 * (75 s + 250 s) = 8500 s. Width-<=100 trials get 0.25 GPU.
    spec = load_spec("vlasov_paper")
    table = {
        (m.name, a): (1e-3, 2e-3 if m.name == "mlasdi" else None)
        for m in spec.methods
        for a in range(5)
    }
    rows = gpu_check.trial_seconds(spec, table)
    assert len(rows) == 40
    by_id = {trial_id: (seconds, share) for trial_id, seconds, share in rows}
    assert by_id["gplasdi-a0-l4-s0"] == pytest.approx((100.0, 0.25))
    assert by_id["gplasdi-a4-l7-s0"] == pytest.approx((100.0, 1.0))
    assert by_id["mlasdi-a2-l5-s0"] == pytest.approx((325.0, 1.0))
    assert sum(seconds for _, seconds, _ in rows) == pytest.approx(8500.0)


def _check_section(record, status="ok"):
    assert set(record) >= {"status", "seconds", "cap_s", "error", "result"}
    assert record["status"] == status, record.get("error")
    assert isinstance(record["seconds"], float) and isinstance(record["result"], dict)


def _check_report(report, sections):
    assert report["format"] == 1 and report["smoke"] is True and report["complete"] is True
    assert isinstance(report["total_s"], float)
    assert report["environment"]["device_type"] == "cpu"
    assert list(report["sections"]) == sections
    for name in sections:
        _check_section(report["sections"][name])


def test_smoke_run_writes_the_json_layout(gpu_check, tmp_path, capsys):
    # The smoke spec (one architecture per method) keeps this in the fast tier.
    out = tmp_path / "check.json"
    sections = ["rates", "steps", "vlasov", "projection"]
    assert gpu_check.main([str(out), "--smoke", "--spec", "smoke", "--only", *sections]) == 0
    report = json.loads(out.read_text())
    _check_report(report, sections)
    assert report["spec"] == "smoke"
    rates = report["sections"]["rates"]["result"]
    for key in ("matmul_float32_tflops", "matmul_tf32_tflops", "matmul_bf16_tflops"):
        assert rates[key] > 0
    steps = report["sections"]["steps"]["result"]
    assert (steps["n_snapshots"], steps["n_state"], steps["latent_dim"]) == (18, 64, 5)
    archs = steps["architectures"]
    assert [(a["method"], a["hidden"]) for a in archs] == [("gplasdi", [30]), ("mlasdi", [20])]
    assert "residual" not in archs[0] and archs[1]["residual_hidden"] == [20]
    for arch, kinds in zip(archs, (["stage1"], ["stage1", "residual"]), strict=True):
        for kind in kinds:
            assert isinstance(arch[kind]["flop_floor"], int)
            for precision in ("float32", "tf32"):
                entry = arch[kind][precision]
                assert entry["plain_s"] > 0 and entry["plain_ratio_to_floor"] > 0
                assert entry["plain_deterministic"] is True
                assert entry["plain_peak_mib"] is None  # no CUDA memory counters on the CPU
                assert "needs a CUDA device" in entry["captured_error"]
                assert "captured_s" not in entry
    vlasov = report["sections"]["vlasov"]["result"]
    assert vlasov["n_params"] == 2 and vlasov["max_abs_diff"] == 0.0
    projection = report["sections"]["projection"]["result"]
    assert projection["float32_captured"] is None  # nothing captured on the CPU
    plain = projection["float32_plain"]
    assert set(plain) == {"trial_s", "1_gpus", "8_gpus"} and len(plain["trial_s"]) == 2
    for n in ("1_gpus", "8_gpus"):
        assert set(plain[n]) == {"gpu_s", "serial_s", "shared_s"}
        assert plain[n]["shared_s"] <= plain[n]["serial_s"] <= plain[n]["gpu_s"] + 1e-12
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2:] == [
        f"gpu_check_total_s={report['total_s']:.1f}",
        "gpu_check_sections_not_ok=0",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["missing_dir/x.json", "--smoke"],
            "error: the directory of missing_dir/x.json does not exist",
        ),
        (["x.json", "--smoke", "--spec", "no_such_spec"], "error: "),
        (["x.json"], "error: no CUDA device here; run with --smoke for the CPU version"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(gpu_check, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    if args == ["x.json"] and gpu_check.torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu_check.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_full_smoke_run(tmp_path):
    # The CI command: every section, the GPU tests (skipped on the CPU) and the Ray study (4
    # trials, 8 rows, all on the CPU) included.
    out = tmp_path / "check.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), str(out), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    _check_report(
        report,
        ["gpu_tests", "rates", "steps", "vlasov", "budget_worker", "ray_study", "projection"],
    )
    worker = report["sections"]["budget_worker"]["result"]
    for dtype in ("float32", "float64"):
        runs = worker[dtype]
        assert runs["device"]["worker_device"] == runs["cpu"]["worker_device"] == "cpu"
        assert runs["device"]["steps"] == [100, 200, 300, 400]
        assert runs["max_rel_diff_to_cpu"] == 0.0  # the same device: the same numbers
    tests = report["sections"]["gpu_tests"]["result"]
    assert tests["counts"]["skipped"] == len(tests["tests"]) > 0
    study = report["sections"]["ray_study"]["result"]
    assert study["n_trials"] == 4 and len(study["rows"]) == study["n_expected_rows"] == 8
    assert study["all_on_device"] and study["rows_complete"]
    assert {r["device"] for r in study["rows"]} == {"cpu"}
    assert report["sections"]["projection"]["result"]["float32_plain"]["1_gpus"]["gpu_s"] > 0
