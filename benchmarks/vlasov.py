"""Benchmark: generate the Vlasov snapshot set for the paper's 441 parameters at 64 x 64.

Prints the wall time (compile included), simulated cell-updates per second and the peak resident
memory; the last line is ``vlasov_441_wall_s=<seconds>``. ``--smoke`` runs 4 parameters at 32 x 32
for CI.

A cell-update is one right-hand-side evaluation at one grid cell: n_mu * N_x * N_v * n_steps * 4
RK stages per run.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from mlasdi.problems import vlasov
from mlasdi.rom import resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="4 parameters at 32 x 32 (CI)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    if args.smoke:
        params = vlasov.parameter_grid(2, 2)
        nx = nv = 32
        n_steps = 100
    else:
        params = vlasov.parameter_grid(21, 21)
        nx = nv = 64
        n_steps = 1000
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "vlasov.h5"
        start = time.perf_counter()
        vlasov.generate_snapshot_file(
            out,
            params=params,
            nx=nx,
            nv=nv,
            n_steps=n_steps,
            device=args.device,
            batch_size=args.batch_size,
            progress=args.progress,
        )
        wall = time.perf_counter() - start
        size_mb = out.stat().st_size / 2**20
    cell_updates = params.shape[0] * nx * nv * n_steps * 4
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # worker processes (one per core): the largest child's peak; the total is at most
    # parent + workers * child
    child_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"parameters: {params.shape[0]}  grid: {nx} x {nv}  steps: {n_steps}")
    print(f"device: {resolve_device(args.device)}  torch threads: {torch.get_num_threads()}")
    print(f"file size: {size_mb:.1f} MiB")
    print(f"wall time (compile included): {wall:.1f} s")
    print(f"cell-updates per second: {cell_updates / wall:.3e}")
    print(
        f"peak RSS: {peak_rss_mb:.0f} MiB (this process), {child_rss_mb:.0f} MiB (largest worker)"
    )
    name = "vlasov_smoke_wall_s" if args.smoke else "vlasov_441_wall_s"
    print(f"{name}={wall:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
