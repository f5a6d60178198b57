"""Wall time and accuracy of the oscillator reference fit, as a user runs it.

Runs ``mlasdi fit --problem oscillator --stages 2 --seed S --quiet`` (the reference configuration,
10,000 + 10,000 iterations) in a fresh process per seed, one after another, and reports per run:
the wall time of the whole command (imports, training, GP, evaluation, files, figures), the stage
times from metrics.json, the test (A = 1.2) errors r1 and r12, and the matmul speed of this
machine measured just before the run. On a shared host the last one shows when a slow run was a
busy host rather than the code.

    python benchmarks/oscillator_fit.py [--seeds 0,1,2] [--out DIR]

The last three lines are ``oscillator_fit_median_s=<number>``, ``oscillator_fit_min_s=<number>``
and ``oscillator_test_r12_max=<number>`` (the worst seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def matmul_gflops(seconds: float = 1.0) -> float:
    """Median FLOP/s of 1024^3 float32 matmuls over about ``seconds`` (GFLOP/s)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    rates = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        rates.append(2 * 1024**3 / (time.perf_counter() - start))
    return statistics.median(rates) / 1e9


def run_fit(seed: int, out: Path) -> dict[str, float]:
    """One ``mlasdi fit`` in a fresh interpreter; its wall time and metrics."""
    command = [sys.executable, "-m", "mlasdi", "fit", "--problem", "oscillator", "--stages", "2"]
    command += ["--seed", str(seed), "--out", str(out), "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    (test,) = [p["err_by_stage"] for p in metrics["parameters"] if p["split"] == "test"]
    stage1, stage2 = metrics["stage_times_s"]
    return {"wall": wall, "stage1": stage1, "stage2": stage2, "r1": test[0], "r12": test[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated, run in this order")
    parser.add_argument("--out", type=Path, default=None, help="keep the fits here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        runs = []
        for seed in seeds:
            gflops = matmul_gflops()
            run = run_fit(seed, root / f"seed{seed}")
            runs.append(run)
            print(
                f"seed {seed}: {run['wall']:.1f} s wall (stage 1 {run['stage1']:.1f} s incl. GP, "
                f"stage 2 {run['stage2']:.1f} s), test r1 {run['r1']:.4f} r12 {run['r12']:.4f} "
                f"ratio {run['r1'] / run['r12']:.1f}; matmul before the run {gflops:.0f} GFLOP/s",
                flush=True,
            )
    walls = [run["wall"] for run in runs]
    print(f"oscillator_fit_median_s={statistics.median(walls):.1f}")
    print(f"oscillator_fit_min_s={min(walls):.1f}")
    print(f"oscillator_test_r12_max={max(run['r12'] for run in runs):.4f}")


if __name__ == "__main__":
    main()
