"""Benchmark: generate GPLaSDI's Burgers 1D example (441 parameters, 1001 x 1001) into HDF5.

Prints the wall time (HDF5 writing included), cell-updates per second, the Newton iteration counts
and the peak resident memory; the machine-readable lines are ``burgers_441_s=<seconds>`` and
``burgers_cell_updates_per_s=<rate>``. ``--smoke`` runs 4 parameters on a 101 x 101 grid for CI
(``burgers_smoke_s=``).

A cell-update is one time step at one unknown: n_mu * (nx - 1) * (nt - 1) per run, whatever the
number of Newton iterations (also printed).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from mlasdi.problems import burgers1d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="4 parameters on 101 x 101 (CI)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    if args.smoke:
        params = burgers1d.parameter_grid(2, 2)
        settings = dict(nx=101, nt=101)
    else:
        params = burgers1d.parameter_grid(21, 21)
        settings = {}
    config = burgers1d.BurgersSettings(**settings)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "burgers1d.h5"
        start = time.perf_counter()
        burgers1d.generate_snapshot_file(
            out, params=params, batch_size=args.batch_size, progress=args.progress, **settings
        )
        wall = time.perf_counter() - start
        size_mb = out.stat().st_size / 2**20
        with h5py.File(out, "r") as handle:
            first, last = handle["snapshots"][0], handle["snapshots"][-1]
    # Newton iterations per step for the first and last parameter (the extremes of the grid)
    x = config.grid()
    _, report = burgers1d.integrate(burgers1d.initial_condition(params[[0, -1]], x), config)
    cell_updates = params.shape[0] * (config.nx - 1) * (config.nt - 1)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"parameters: {params.shape[0]}  grid: {config.nx}  time levels: {config.nt}")
    print(f"file size: {size_mb:.1f} MiB")
    print(f"wall time (HDF5 writing included): {wall:.1f} s")
    print(
        f"Newton iterations per step (a, w) = {tuple(params[0].tolist())}: "
        f"max {report.iterations[0].max()}, mean {report.iterations[0].mean():.3f}; "
        f"{tuple(params[-1].tolist())}: max {report.iterations[1].max()}, "
        f"mean {report.iterations[1].mean():.3f}"
    )
    print(
        f"u range at t = 1: first [{first[-1].min():.4f}, {first[-1].max():.4f}], "
        f"last [{last[-1].min():.4f}, {last[-1].max():.4f}]"
    )
    print(f"peak RSS: {peak_rss_mb:.0f} MiB")
    name = "burgers_smoke_s" if args.smoke else "burgers_441_s"
    print(f"{name}={wall:.2f}")
    print(f"burgers_cell_updates_per_s={cell_updates / wall:.4g}")
    print(f"burgers_newton_iters_max={int(report.iterations.max())}")
    assert np.all(report.failed_step < 0), "Newton failed on the benchmark grid"
    return 0


if __name__ == "__main__":
    sys.exit(main())
