"""The GPU check: everything that needs a GPU, run in one go, every figure written to one JSON file.

    python benchmarks/gpu_check.py OUT.json            # on a CUDA machine (<= 8 minutes)
    python benchmarks/gpu_check.py OUT.json --smoke    # the same code paths on the CPU, tiny (CI)

Sections, in order, each under its own time cap; a section that fails or runs out of time records
its error (and whatever it measured so far) and the next one runs:

gpu_tests   ``pytest -m gpu tests/test_gpu.py`` (CUDA fit == CPU fit, CUDA-graph steps bit-for-bit)
rates       matmul FLOP/s (float32, TF32, bf16; n x n x n) and device-to-device copy bandwidth
steps       one stage-1 iteration of each of the paper's 10 architectures (vlasov_paper preset,
            latent 5, the full 25 x 251 x 4096 batch) and one residual iteration of each that trains
            residual stages: median seconds, ratio to the FLOP floor (6 x snapshots x weights) at
            the measured float32 rate, peak memory; plain and CUDA-graph captured; float32 and TF32;
            whether 3 captured steps equal 3 plain ones bit for bit (and 3 plain ones each other).
            ``--spec`` times another spec's architectures instead
vlasov      the Vlasov generator for 441 parameters at 64 x 64 on the device (wall time) and the
            max difference from a CPU solve at 3 parameters
budget_worker  a budget-search worker (the smoke spec, one three-stage candidate) on the device
            and on the CPU: the worker's device, its per-step validation errors, their difference
ray_study   a smoke study through Ray Tune, 4 trials sharing one GPU (0.25 each): every row ok,
            every trial on the device, no missing evaluation
projection  projected wall time of vlasov_paper on 1 and 8 GPUs from the measured step times and
            the plan's iteration counts

The JSON is rewritten (atomically) after every section, so a killed run keeps what it measured.
The last lines printed are a short table, ``gpu_check_total_s=<s>`` and
``gpu_check_sections_not_ok=<n>``; the exit code is 1 when a section failed, 2 on bad input.
docs/gpu.md says how to read the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import heapq
import importlib.util
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from train_step import sync, synthetic_snapshots

import mlasdi
from mlasdi import cuda_graphs
from mlasdi.config import ResidualStageConfig, Stage1Config
from mlasdi.problems import vlasov
from mlasdi.train import FullBatchTrainer, ResidualTrainer, Stage1Trainer
from studies.plan import Trial, trials
from studies.spec import ResourceSpec, SpecError, StudySpec, load_spec

ROOT = Path(__file__).resolve().parent.parent
JSON_FORMAT = 1
LATENT = 5
DT = 0.02
PRECISIONS = {"float32": "highest", "tf32": "high"}  # torch.set_float32_matmul_precision
MODES = ("plain", "captured")
EQUALITY_STEPS = 3


@dataclass(frozen=True)
class Sizes:
    """Problem sizes and time caps of one mode (full on a GPU, or the CPU smoke run)."""

    n_train: int
    n_t: int
    nx: int
    nv: int
    matmul_n: int
    copy_mib: int
    repeat_s: float  # a timed repeat lasts about this long
    repeats: int
    vlasov_grid: tuple[int, int]
    vlasov_nx: int
    vlasov_steps: int
    vlasov_cpu_indices: tuple[int, ...]
    caps_s: dict[str, float]
    total_s: float


FULL = Sizes(
    n_train=25,
    n_t=251,
    nx=64,
    nv=64,
    matmul_n=8192,
    copy_mib=1024,
    repeat_s=0.1,
    repeats=5,
    vlasov_grid=(21, 21),
    vlasov_nx=64,
    vlasov_steps=1000,
    vlasov_cpu_indices=(0, 220, 440),
    caps_s={
        "gpu_tests": 90,
        "rates": 20,
        "steps": 150,
        "vlasov": 120,
        "budget_worker": 30,
        "ray_study": 80,
        "projection": 10,
    },
    total_s=480,
)
SMOKE = Sizes(
    n_train=2,
    n_t=9,
    nx=8,
    nv=8,
    matmul_n=128,
    copy_mib=4,
    repeat_s=0.002,
    repeats=1,
    vlasov_grid=(2, 1),
    vlasov_nx=8,
    vlasov_steps=8,
    vlasov_cpu_indices=(0, 1),
    caps_s={
        "gpu_tests": 120,
        "rates": 20,
        "steps": 60,
        "vlasov": 60,
        "budget_worker": 60,
        "ray_study": 180,
        "projection": 10,
    },
    total_s=600,
)


class SectionTimeout(Exception):
    """A section ran past its time cap."""


# ---------------------------------------------------------------------------------------------
# Pure arithmetic (tested on the CPU): FLOP floors and the projection
# ---------------------------------------------------------------------------------------------


def iteration_flop_floor(kind: str, trial: Trial, n_state: int, n_snapshots: int) -> int:
    """FLOP floor of one full-batch iteration: 6 x snapshots x weights trained (a forward and a
    backward GEMM pass over every weight; the plan's compute count). ``kind``: ``stage1``
    (encoder + decoder) or ``residual`` (one residual decoder)."""
    if kind == "stage1":
        return 6 * n_snapshots * trial.stage1_weights(n_state)
    if kind == "residual":
        return 6 * n_snapshots * trial.residual_weights(n_state)
    raise ValueError(f"unknown step kind {kind!r}")


def trial_seconds(
    spec: StudySpec, step_s: dict[tuple[str, int], tuple[float, float | None]]
) -> list[tuple[str, float, float]]:
    """``(trial_id, seconds, GPU fraction)`` of every trial of ``spec``: its stage-1 iterations
    times the stage-1 step time of its (method, architecture) plus its residual iterations times
    the residual step time (``step_s[(method, arch_index)] = (stage1 s, residual s or None)``)."""
    out = []
    for trial in trials(spec):
        stage1_iters, residual_iters, _ = trial.shared_cost(1, 1)  # iterations; cost unused
        t1, t_res = step_s[(trial.method, trial.arch_index)]
        seconds = stage1_iters * t1 + (residual_iters * t_res if residual_iters else 0.0)
        share = spec.resources.for_hidden(trial.hidden)["gpu"] or 1.0
        out.append((trial.trial_id, seconds, share))
    return out


def project_wall_time(jobs: Sequence[tuple[float, float]], n_gpus: int) -> dict[str, float]:
    """Wall time of ``jobs`` = ``(seconds alone on a GPU, GPU fraction requested)`` on ``n_gpus``.

    ``gpu_s``: the sum. ``serial_s``: trials that share a GPU gain nothing by it (the GPU is the
    bottleneck), longest first onto the least loaded GPU (as the study orders them). ``shared_s``:
    trials sharing a GPU each run at their solo speed (launch-bound steps overlap), a lower bound:
    max(sum of fraction x seconds / n_gpus, longest trial).
    """
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    loads = [0.0] * n_gpus
    for seconds in sorted((s for s, _ in jobs), reverse=True):
        heapq.heapreplace(loads, loads[0] + seconds)
    longest = max((s for s, _ in jobs), default=0.0)
    return {
        "gpu_s": sum(s for s, _ in jobs),
        "serial_s": max(loads),
        "shared_s": max(sum(s * f for s, f in jobs) / n_gpus, longest),
    }


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _timeout(signum: int, frame: object) -> None:
    raise SectionTimeout


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device, baseline: int) -> float | None:
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20


def _run_child(command: list[str], ctx: Context, timeout: float) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``command`` run from the repository root. It runs in a
    session of its own, which is killed whole (Ray's processes too) when it overruns."""
    with subprocess.Popen(
        command,
        cwd=ROOT,
        env=ctx.child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as child:
        try:
            output, _ = child.communicate(timeout=timeout)
        except BaseException:  # its timeout, or the section's
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            raise
    return child.returncode, output


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "mlasdi_version": mlasdi.__version__,
        "device_type": device.type,
        "device_name": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=props.total_memory / 2**30,
        )
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        env["git_commit"] = None
    return env


def _write_json(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_plain(report), indent=1, allow_nan=False))
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, NaN and Inf as null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    if isinstance(value, float):
        return _finite_or_none(value)
    return value


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


# ---------------------------------------------------------------------------------------------
# Sections. Each fills ``result`` as it goes (kept when it fails or times out).
# ---------------------------------------------------------------------------------------------


def section_gpu_tests(result: dict[str, Any], ctx: Context) -> None:
    xml_path = ctx.scratch / "gpu_tests.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "tests/test_gpu.py",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml_path}",
    ]
    result["command"] = " ".join(command[1:])
    returncode, output = _run_child(command, ctx, ctx.cap_s - 5)
    result["returncode"] = returncode
    result["output_tail"] = output[-3000:]
    cases = []
    if xml_path.is_file():
        for case in ET.parse(xml_path).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
                node = case.find(tag)
                if node is not None:
                    outcome, message = name, (node.get("message") or "")[:500]
                    break
            name = f"{case.get('classname')}::{case.get('name')}"
            cases.append({"name": name, "outcome": outcome, "message": message})
    result["tests"] = cases
    result["counts"] = {
        k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")
    }
    if returncode != 0:
        raise RuntimeError(f"pytest -m gpu exited with {returncode}")


def section_rates(result: dict[str, Any], ctx: Context) -> None:
    device, n = ctx.device, ctx.sizes.matmul_n
    result["matmul_n"] = n
    for name, dtype, precision in (
        ("float32", torch.float32, "highest"),
        ("tf32", torch.float32, "high"),
        ("bf16", torch.bfloat16, "highest"),
    ):
        torch.set_float32_matmul_precision(precision)
        generator = torch.Generator(device="cpu").manual_seed(0)
        a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        torch.mm(a, b)
        seconds = _median_seconds(lambda a=a, b=b: torch.mm(a, b), device, 10)
        result[f"matmul_{name}_tflops"] = 2 * n**3 / seconds / 1e12
        del a, b
        _free(device)
    torch.set_float32_matmul_precision("highest")
    count = ctx.sizes.copy_mib * 2**20 // 4
    src = torch.ones(count, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = _median_seconds(lambda d=dst, s=src: d.copy_(s), device, 10)
    result["copy_mib"] = ctx.sizes.copy_mib
    result["copy_device_gbps"] = 2 * src.numel() * 4 / seconds / 1e9  # bytes read + written
    del src, dst
    _free(device)


def _architectures(spec: StudySpec) -> list[Trial]:
    """One trial per (method, architecture) of the spec, at latent size 5."""
    seen: dict[tuple[str, int], Trial] = {}
    for trial in trials(spec):
        key = (trial.method, trial.arch_index)
        if key not in seen:
            seen[key] = dataclasses.replace(trial, latent_dim=LATENT)
    return list(seen.values())


def _make_trainer(kind: str, trial: Trial, ctx: Context) -> FullBatchTrainer:
    if kind == "stage1":
        return Stage1Trainer.create(
            ctx.U, DT, trial.hidden, LATENT, "softplus", Stage1Config(), seed=0
        )
    config = ResidualStageConfig(hidden=trial.residual_hidden, activation="tanh")
    return ResidualTrainer.create(ctx.Z, ctx.U, config, seed=0)


def _time_training(trainer: FullBatchTrainer, ctx: Context) -> tuple[float, int]:
    """(median seconds per iteration of ``trainer.train``, iterations per repeat)."""
    start = time.perf_counter()
    trainer.train(trainer.iteration + 2)
    sync(ctx.device)
    estimate = (time.perf_counter() - start) / 2
    iters = int(min(2000, max(2, math.ceil(ctx.sizes.repeat_s / max(estimate, 1e-7)))))
    seconds = _median_seconds(
        lambda: trainer.train(trainer.iteration + iters), ctx.device, ctx.sizes.repeats
    )
    return seconds / iters, iters


def _step_floor(kind: str, trial: Trial, ctx: Context) -> int:
    return iteration_flop_floor(kind, trial, ctx.n_state, ctx.n_snapshots)


def _measure_step(kind: str, trial: Trial, ctx: Context) -> dict[str, Any]:
    device = ctx.device
    entry: dict[str, Any] = {}
    _free(device)
    baseline = _allocated(device)
    _reset_peak(device)
    plain = _make_trainer(kind, trial, ctx)
    plain.train(EQUALITY_STEPS)
    entry["plain_peak_mib"] = _peak_mib(device, baseline)
    twin = _make_trainer(kind, trial, ctx)
    twin.train(EQUALITY_STEPS)
    entry["plain_deterministic"] = bool(torch.equal(plain.optimizer.param, twin.optimizer.param))
    del twin
    _free(device)
    try:
        baseline = _allocated(device)
        _reset_peak(device)
        captured = _make_trainer(kind, trial, ctx)
        start = time.perf_counter()
        cuda_graphs.capture(captured)
        sync(device)
        entry["capture_s"] = time.perf_counter() - start
        captured.train(EQUALITY_STEPS)
        entry["captured_peak_mib"] = _peak_mib(device, baseline)
        entry["captured_bitwise_equal"] = bool(
            torch.equal(plain.optimizer.param, captured.optimizer.param)
            and torch.equal(plain.history, captured.history)
        )
    except cuda_graphs.CaptureError as error:
        entry["captured_error"] = _error_text(error)
        captured = None
    for mode, trainer in (("plain", plain), ("captured", captured)):
        if trainer is None:
            continue
        seconds, iters = _time_training(trainer, ctx)
        entry[f"{mode}_s"] = seconds
        entry[f"{mode}_iters_per_repeat"] = iters
        if ctx.fp32_flops:
            floor_s = _step_floor(kind, trial, ctx) / ctx.fp32_flops
            entry[f"{mode}_ratio_to_floor"] = seconds / floor_s
    del plain, captured
    _free(device)
    return entry


def section_steps(result: dict[str, Any], ctx: Context) -> None:
    rng = np.random.default_rng(0)
    U = synthetic_snapshots(0, ctx.sizes.n_train, ctx.sizes.n_t, ctx.sizes.nx, ctx.sizes.nv)
    t = np.linspace(0, 5, ctx.sizes.n_t)
    phase = rng.uniform(0, 2 * np.pi, (ctx.sizes.n_train, 1, LATENT))
    Z = np.sin(t[None, :, None] * np.arange(1, LATENT + 1) + phase).astype(np.float32)
    ctx.U = torch.as_tensor(U).to(ctx.device)
    ctx.Z = torch.as_tensor(Z).to(ctx.device)
    result.update(
        n_snapshots=ctx.n_snapshots,
        n_state=ctx.n_state,
        latent_dim=LATENT,
        data_mib=ctx.U.numel() * 4 / 2**20,
        fp32_tflops_for_floor=ctx.fp32_flops / 1e12 if ctx.fp32_flops else None,
        architectures=[],
    )
    previous = os.environ.get(cuda_graphs.ENV_SWITCH)
    os.environ[cuda_graphs.ENV_SWITCH] = "0"  # plain trainers must not capture by themselves
    try:
        archs = []
        for trial in _architectures(ctx.spec):
            kinds = ("stage1", "residual") if trial.residual_hidden else ("stage1",)
            arch: dict[str, Any] = {
                "method": trial.method,
                "arch_index": trial.arch_index,
                "hidden": list(trial.hidden),
                "residual_hidden": list(trial.residual_hidden),
                **{kind: {"flop_floor": _step_floor(kind, trial, ctx)} for kind in kinds},
            }
            result["architectures"].append(arch)
            archs.append((trial, kinds, arch))
        # Every architecture in float32 first: what the projection needs if time runs short.
        for precision, setting in PRECISIONS.items():
            torch.set_float32_matmul_precision(setting)
            for trial, kinds, arch in archs:
                for kind in kinds:
                    try:
                        arch[kind][precision] = _measure_step(kind, trial, ctx)
                    except SectionTimeout:
                        raise
                    except Exception as error:  # recorded; the next step runs
                        arch[kind][precision] = {"error": _error_text(error)}
    finally:
        torch.set_float32_matmul_precision("highest")
        if previous is None:
            os.environ.pop(cuda_graphs.ENV_SWITCH, None)
        else:
            os.environ[cuda_graphs.ENV_SWITCH] = previous
        del ctx.U, ctx.Z
        _free(ctx.device)


def section_vlasov(result: dict[str, Any], ctx: Context) -> None:
    s = ctx.sizes
    params = vlasov.parameter_grid(*s.vlasov_grid)
    grid = {"nx": s.vlasov_nx, "nv": s.vlasov_nx, "n_steps": s.vlasov_steps, "progress": False}
    result.update(n_params=int(params.shape[0]), **{k: grid[k] for k in ("nx", "nv", "n_steps")})
    start = time.perf_counter()
    on_device = vlasov.solve(params, device=ctx.device, **grid)
    result["device_wall_s"] = time.perf_counter() - start
    index = list(s.vlasov_cpu_indices)
    result["cpu_indices"] = index
    start = time.perf_counter()
    on_cpu = vlasov.solve(params[index], device="cpu", compile=False, **grid)
    result["cpu_wall_s"] = time.perf_counter() - start
    diff = np.abs(on_device.snapshots[index] - on_cpu.snapshots)
    result["max_abs_diff"] = float(diff.max())
    result["max_rel_diff"] = float(diff.max() / np.abs(on_cpu.snapshots).max())


def section_budget_worker(result: dict[str, Any], ctx: Context) -> None:
    """A budget-search worker (in process, as a Ray actor runs it) on the smoke spec and one
    three-stage candidate, on the device and on the CPU, in float32 (the studies' default) and
    float64 (where the device and CPU kernels must agree closely): its device and per-step
    validation errors."""
    from studies.budget import SearchSetup, TrialWorker, search_data

    base = load_spec("smoke")
    data, val = search_data(base, 0.2, 0)
    setup = SearchSetup("smoke", 400, (20,), 3, 0, 0, val_index=tuple(val))
    cand = setup.candidate(3, 0.5, 0.5, 2.0, 1.0)
    for dtype in ("float32", "float64"):
        spec = dataclasses.replace(base, training=dataclasses.replace(base.training, dtype=dtype))
        runs = {}
        for name, device in (("device", str(ctx.device)), ("cpu", "cpu")):
            worker = TrialWorker(spec, setup, data, device=device)
            worker.start(cand)
            reports = [worker.advance()]
            while not reports[-1]["done"]:
                reports.append(worker.advance())
            runs[name] = {
                "worker_device": str(worker.device),
                "steps": [r["step"] for r in reports],
                "values": [_finite_or_none(r["value"]) for r in reports],
                "status": [r["status"] for r in reports],
            }
        on_device, on_cpu = runs["device"], runs["cpu"]
        if on_device["worker_device"].split(":")[0] != ctx.device.type:
            raise RuntimeError(f"the worker trained on {on_device['worker_device']}")
        if set(on_device["status"]) != {"ok"} or None in on_device["values"]:
            raise RuntimeError(f"the worker on the device reported {on_device['status']}")
        runs["max_rel_diff_to_cpu"] = max(
            abs(a - b) / abs(b) for a, b in zip(on_device["values"], on_cpu["values"], strict=True)
        )
        result[dtype] = runs


def section_ray_study(result: dict[str, Any], ctx: Context) -> None:
    if importlib.util.find_spec("ray") is None:
        raise RuntimeError(
            "ray is not installed in this Python: install the project with `pip install -e .` "
            "(docs/gpu.md)"
        )
    share = 0.25 if ctx.device.type == "cuda" else 0.0
    base = load_spec("smoke")
    methods = tuple(dataclasses.replace(m, latent_dims=(3, 4)) for m in base.methods)
    spec = dataclasses.replace(
        base,
        name="gpu_check",
        methods=methods,
        resources=ResourceSpec(cpus=1, gpus=share, small_gpus=share, small_width=100),
    )
    expected = [e for t in trials(spec) for e in t.evaluation_ids]
    result.update(n_trials=len(trials(spec)), gpu_per_trial=share, n_expected_rows=len(expected))
    spec_path = ctx.scratch / "gpu_check_study.toml"
    spec_path.write_text(spec.to_toml())
    out = ctx.scratch / "study"
    command = [
        sys.executable,
        "-m",
        "studies.cli",
        "run",
        str(spec_path),
        "--out",
        str(out),
        "--num-cpus",
        "4",
        "--no-report",
        "-v",
        "0",
    ]
    start = time.perf_counter()
    returncode, output = _run_child(command, ctx, ctx.cap_s - 10)
    result["wall_s"] = time.perf_counter() - start
    result["returncode"] = returncode
    result["output_tail"] = output[-3000:]
    for line in output.splitlines():
        if line.startswith("ray_overhead_fraction="):
            result["ray_overhead_fraction"] = float(line.split()[0].split("=")[1])
    from analysis.schema import read_results

    rows = read_results(out)
    expect_device = ctx.device.type
    numbers = ["err_max", "err_mean", "train_time_s", "eval_time_s"]
    result["rows"] = [
        {
            "evaluation_id": r["evaluation_id"],
            "status": r["status"],
            "device": r["device"],
            **{k: _finite_or_none(float(r[k])) for k in numbers},
        }
        for _, r in rows.sort_values("evaluation_id").iterrows()
    ]
    missing = sorted(set(expected) - set(rows["evaluation_id"]))
    not_ok = [r["evaluation_id"] for r in result["rows"] if r["status"] != "ok"]
    off_device = [
        r["evaluation_id"] for r in result["rows"] if r["device"].split(":")[0] != expect_device
    ]
    incomplete = [r["evaluation_id"] for r in result["rows"] if None in (r[k] for k in numbers)]
    result.update(
        missing=missing,
        not_ok=not_ok,
        off_device=off_device,
        incomplete=incomplete,
        all_on_device=not off_device and not missing,
        rows_complete=not (missing or not_ok or incomplete),
    )
    if returncode != 0 or missing or not_ok or off_device or incomplete:
        raise RuntimeError(
            f"study exited {returncode}; missing {missing}, not ok {not_ok}, "
            f"not on {expect_device} {off_device}, incomplete {incomplete}"
        )


def _step_table(
    steps: dict[str, Any], precision: str, mode: str, spec: StudySpec
) -> dict[tuple[str, int], tuple[float, float | None]] | None:
    """``{(method, arch_index): (stage-1 s, residual s or None)}`` from the steps section, or
    None when a step the projection of ``spec`` needs was not measured."""
    table: dict[tuple[str, int], tuple[float, float | None]] = {}
    for arch in steps.get("architectures", []):
        times = []
        for kind in ("stage1", "residual"):
            if kind not in arch:
                times.append(None)
                continue
            seconds = arch[kind].get(precision, {}).get(f"{mode}_s")
            if seconds is None:
                return None
            times.append(seconds)
        table[(arch["method"], arch["arch_index"])] = (times[0], times[1])
    needed = {(t.method, t.arch_index) for t in _architectures(spec)}
    return table if needed <= set(table) else None


def section_projection(result: dict[str, Any], ctx: Context) -> None:
    steps = ctx.report["sections"].get("steps", {}).get("result") or {}
    result.update(
        spec=ctx.spec.name,
        n_trials=len(trials(ctx.spec)),
        note="GPU time of training only (no GP fits, no evaluation); latent 5 times for all sizes",
    )
    for precision in PRECISIONS:
        for mode in MODES:
            table = _step_table(steps, precision, mode, ctx.spec)
            if table is None:
                result[f"{precision}_{mode}"] = None
                continue
            per_trial = trial_seconds(ctx.spec, table)
            jobs = [(seconds, share) for _, seconds, share in per_trial]
            result[f"{precision}_{mode}"] = {
                "trial_s": {trial_id: seconds for trial_id, seconds, _ in per_trial},
                **{f"{n}_gpus": project_wall_time(jobs, n) for n in (1, 8)},
            }


SECTIONS: tuple[tuple[str, Callable[[dict[str, Any], Context], None]], ...] = (
    ("gpu_tests", section_gpu_tests),
    ("rates", section_rates),
    ("steps", section_steps),
    ("vlasov", section_vlasov),
    ("budget_worker", section_budget_worker),
    ("ray_study", section_ray_study),
    ("projection", section_projection),
)


@dataclass
class Context:
    """What the sections share."""

    device: torch.device
    sizes: Sizes
    spec: StudySpec
    scratch: Path
    report: dict[str, Any]
    child_env: dict[str, str]
    cap_s: float = 0.0
    U: Any = None
    Z: Any = None

    @property
    def n_snapshots(self) -> int:
        return self.sizes.n_train * self.sizes.n_t

    @property
    def n_state(self) -> int:
        return self.sizes.nx * self.sizes.nv

    @property
    def fp32_flops(self) -> float | None:
        rates = self.report["sections"].get("rates", {}).get("result") or {}
        tflops = rates.get("matmul_float32_tflops")
        return tflops * 1e12 if tflops else None


def run_section(name: str, fn: Callable, ctx: Context, deadline: float) -> dict[str, Any]:
    """Run one section under its cap; record status ok | failed | timeout | skipped."""
    cap = min(ctx.sizes.caps_s[name], deadline - time.perf_counter())
    record: dict[str, Any] = {"status": "ok", "cap_s": cap, "error": None, "result": {}}
    if cap < 1:
        record.update(status="skipped", error="the check's total time ran out", seconds=0.0)
        return record
    ctx.cap_s = cap
    start = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.setitimer(signal.ITIMER_REAL, cap)
    try:
        fn(record["result"], ctx)
    except (SectionTimeout, subprocess.TimeoutExpired):
        record.update(status="timeout", error=f"ran past its cap of {cap:.0f} s")
    except Exception as error:  # every failure is recorded; the next section runs
        record.update(
            status="failed",
            error=_error_text(error),
            traceback=traceback.format_exc()[-2000:],
        )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    record["seconds"] = time.perf_counter() - start
    return record


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_table(report: dict[str, Any]) -> str:
    """The short table printed last."""
    sections = report["sections"]
    lines = [
        f"gpu_check on {report['environment'].get('device_name')} "
        f"({report['environment']['device_type']}), smoke={report['smoke']}, "
        f"{report.get('total_s', 0):.0f} s",
        "sections: "
        + ", ".join(
            f"{k} {v['status']} ({v.get('seconds', 0):.0f} s)" for k, v in sections.items()
        ),
    ]
    lines += [f"  {k}: {v['error']}" for k, v in sections.items() if v["status"] != "ok"]
    rates = sections.get("rates", {}).get("result") or {}
    lines.append(
        "matmul TFLOP/s: float32 {} tf32 {} bf16 {}; copy {} GB/s".format(
            *(_fmt(rates.get(f"matmul_{k}_tflops"), ".3g") for k in ("float32", "tf32", "bf16")),
            _fmt(rates.get("copy_device_gbps"), ".0f"),
        )
    )
    steps = sections.get("steps", {}).get("result") or {}
    lines.append(
        f"{'method':<8} {'hidden':<14} {'step':<8} {'fp32 ms':>8} {'graph ms':>9} "
        f"{'tf32 ms':>8} {'tf32 graph':>10} {'x floor':>8} {'bitwise':>7} {'MiB':>7}"
    )
    for arch in steps.get("architectures", []):
        for kind in ("stage1", "residual"):
            if kind not in arch:
                continue
            f32, t32 = arch[kind].get("float32", {}), arch[kind].get("tf32", {})

            def ms(entry: dict, key: str) -> str:
                return _fmt(entry[key] * 1e3 if entry.get(key) is not None else None, ".3f")

            lines.append(
                f"{arch['method']:<8} {'-'.join(map(str, arch['hidden'])):<14} {kind:<8} "
                f"{ms(f32, 'plain_s'):>8} {ms(f32, 'captured_s'):>9} {ms(t32, 'plain_s'):>8} "
                f"{ms(t32, 'captured_s'):>10} {_fmt(f32.get('plain_ratio_to_floor'), '.1f'):>8} "
                f"{str(f32.get('captured_bitwise_equal', '-')):>7} "
                f"{_fmt(f32.get('plain_peak_mib'), '.0f'):>7}"
            )
    problems = [
        f"{arch['method']} {'-'.join(map(str, arch['hidden']))} {kind} {precision}: "
        + (entry.get("error") or entry.get("captured_error"))
        for arch in steps.get("architectures", [])
        for kind in ("stage1", "residual")
        for precision, entry in arch.get(kind, {}).items()
        if isinstance(entry, dict) and (entry.get("error") or entry.get("captured_error"))
    ]
    if problems:
        lines.append(f"step errors: {len(problems)}, the first: {problems[0]}")
    v = sections.get("vlasov", {}).get("result") or {}
    lines.append(
        f"vlasov {v.get('n_params', '-')} params: {_fmt(v.get('device_wall_s'), '.1f')} s on the "
        f"device, max |device - cpu| {_fmt(v.get('max_abs_diff'), '.2e')}"
    )
    b = sections.get("budget_worker", {}).get("result") or {}
    for dtype in ("float32", "float64"):
        runs = b.get(dtype) or {}
        lines.append(
            f"budget worker {dtype} on {(runs.get('device') or {}).get('worker_device', '-')}: "
            f"max rel diff of its validation errors to the CPU's "
            f"{_fmt(runs.get('max_rel_diff_to_cpu'), '.1e')}"
        )
    r = sections.get("ray_study", {}).get("result") or {}
    lines.append(
        f"ray study: {len(r.get('rows', []))}/{r.get('n_expected_rows', '-')} rows, all on device "
        f"{r.get('all_on_device', '-')}, complete {r.get('rows_complete', '-')}"
    )
    p = sections.get("projection", {}).get("result") or {}
    for key in ("float32_plain", "float32_captured", "tf32_plain", "tf32_captured"):
        if p.get(key):
            one, eight = p[key]["1_gpus"], p[key]["8_gpus"]
            lines.append(
                f"projection {key}: 1 GPU {one['serial_s'] / 3600:.2f} h "
                f"(shared {one['shared_s'] / 3600:.2f} h), 8 GPUs {eight['serial_s'] / 3600:.2f} h "
                f"(shared {eight['shared_s'] / 3600:.2f} h)"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", metavar="OUT.json", help="where the JSON report is written")
    parser.add_argument("--smoke", action="store_true", help="the same code paths on the CPU, tiny")
    parser.add_argument(
        "--spec",
        default="vlasov_paper",
        help="study spec whose architectures are timed and whose plan is projected "
        "(a TOML file or preset name; default vlasov_paper)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=[n for n, _ in SECTIONS], help="run only these sections"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not out.parent.is_dir():
        print(f"error: the directory of {out} does not exist", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args.spec)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --smoke for the CPU version", file=sys.stderr)
        return 2
    sizes = SMOKE if args.smoke else FULL
    device = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        # Tiny tensors: one thread, so that a busy CI machine's OpenMP barriers do not stall.
        torch.set_num_threads(1)
    start = time.perf_counter()
    deadline = start + sizes.total_s
    report: dict[str, Any] = {
        "format": JSON_FORMAT,
        "smoke": args.smoke,
        "spec": spec.name,
        "complete": False,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "environment": _environment(device),
        "sections": {},
    }
    path = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        ctx = Context(device, sizes, spec, Path(scratch), report, child_env)
        for name, fn in SECTIONS:
            if args.only and name not in args.only:
                continue
            print(f"[gpu_check] {name} ...", flush=True)
            report["sections"][name] = run_section(name, fn, ctx, deadline)
            report["total_s"] = time.perf_counter() - start
            _write_json(out, report)
    report["complete"] = True
    report["total_s"] = time.perf_counter() - start
    _write_json(out, report)
    print(summary_table(report))
    print(f"gpu_check_total_s={report['total_s']:.1f}")
    failed = [k for k, v in report["sections"].items() if v["status"] != "ok"]
    print(f"gpu_check_sections_not_ok={len(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
