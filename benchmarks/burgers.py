"""Benchmark: GPLaSDI's Burgers 1D example, 441 parameters on its 1001-node, 1001-level grid.

Two timed passes: the solver alone (batches of parameters integrated and dropped, no disk), then
the user's command, generation into an HDF5 file (3.4 GiB; disk writing included). Prints the
Newton iteration counts over every step of every parameter and the peak resident memory. The
machine-readable lines are ``burgers_441_s=`` (HDF5 generation), ``burgers_441_solve_s=`` (solver
only), ``burgers_441_solve_cpu_s=`` (its CPU time: the wall time on an idle core),
``burgers_cell_updates_per_s=`` (solver only, wall) and ``burgers_newton_iters_max=``.
``--smoke`` runs 4 parameters on a 101 x 101 grid for CI (``burgers_smoke_s=`` etc.).

A cell-update is one time step at one unknown: n_mu * (nx - 1) * (nt - 1) per run, whatever the
number of Newton iterations.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mlasdi.problems import burgers1d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="4 parameters on 101 x 101 (CI)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    if args.smoke:
        params = burgers1d.parameter_grid(2, 2)
        settings = dict(nx=101, nt=101)
    else:
        params = burgers1d.parameter_grid(21, 21)
        settings = {}
    config = burgers1d.BurgersSettings(**settings)
    x = config.grid()

    start, cpu_start = time.perf_counter(), time.process_time()
    iterations, failures = [], 0
    for lo in range(0, params.shape[0], args.batch_size):
        u0 = burgers1d.initial_condition(params[lo : lo + args.batch_size], x)
        _, report = burgers1d.integrate(u0, config)
        iterations.append(report.iterations)
        failures += int(np.sum(report.failed_step >= 0))
    solve_s, solve_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    iterations = np.concatenate(iterations)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "burgers1d.h5"
        start, cpu_start = time.perf_counter(), time.process_time()
        burgers1d.generate_snapshot_file(
            out, params=params, batch_size=args.batch_size, progress=args.progress, **settings
        )
        file_s, file_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        size_mb = out.stat().st_size / 2**20

    cell_updates = params.shape[0] * (config.nx - 1) * (config.nt - 1)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"parameters: {params.shape[0]}  nodes: {config.nx}  time levels: {config.nt}")
    print(
        f"solver only: {solve_s:.1f} s wall, {solve_cpu_s:.1f} s CPU; "
        f"into HDF5 ({size_mb:.0f} MiB): {file_s:.1f} s wall, {file_cpu_s:.1f} s CPU"
    )
    print(
        f"Newton iterations per step: max {iterations.max()}, mean {iterations.mean():.4f}; "
        f"steps that did not converge: {failures}"
    )
    print(f"peak RSS: {peak_rss_mb:.0f} MiB")
    tag = "smoke" if args.smoke else "441"
    print(f"burgers_{tag}_s={file_s:.2f}")
    print(f"burgers_{tag}_solve_s={solve_s:.2f}")
    print(f"burgers_{tag}_solve_cpu_s={solve_cpu_s:.2f}")
    print(f"burgers_cell_updates_per_s={cell_updates / solve_s:.4g}")
    print(f"burgers_newton_iters_max={int(iterations.max())}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
