"""Benchmark: one greedy sampling round at the size of GPLaSDI's Burgers 1D example (issue 20).

GPLaSDI's example (LLNL/GPLaSDI examples/burgers1d.yml): 1001 nodes x 1001 levels, a 21 x 21
candidate grid, 20 GP samples per candidate, autoencoder 1001-100-5 (sigmoid). A round's cost
does not depend on training, so the ROM here is a randomly initialised stage-1 autoencoder whose
latent dynamics are fitted (least squares, then the GP) on the FOM trajectories of the 4 corners,
as in GPLaSDI's first round. Each round scores every candidate that is not a training point by
``max_std`` (every candidate x sample rolled out exactly and decoded, reduced in chunks) and by
``coef_std``, and picks one. ``--levels`` is the number of time levels the ROM is trained and
rolled out on: 1001 as GPLaSDI, 101 as the ``burgers1d_gplasdi`` preset (every 10th).

Prints ``levels``, ``candidates``, ``max_std_round_s`` (median over ``--rounds`` rounds, each
with its own sample seed, and every round's time), ``coef_std_round_s``, ``pick`` (the first
round's pick), ``*_round_cpu_s`` (the median CPU time of all threads: on a shared machine
the wall time is that over the cores this process actually got) and ``peak_rss_mb`` (the
process's high-water mark, ``resource.getrusage``).
``--smoke``: 101 nodes x 101 levels on a 3 x 3 grid (seconds; CI).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch

from mlasdi.config import AutoencoderConfig, GPConfig, ROMConfig, SamplingConfig, Stage1Config
from mlasdi.nn import Autoencoder
from mlasdi.problems import burgers1d
from mlasdi.rom import stage1_rom
from mlasdi.sampling import box_corners, next_points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="101 x 101 on a 3 x 3 grid (CI)")
    parser.add_argument("--levels", type=int, default=1001, help="time levels of the ROM")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    nx, nt, grid = (101, 101, (3, 3)) if args.smoke else (1001, 1001, (21, 21))
    levels = min(args.levels, nt)
    stride = (nt - 1) // (levels - 1)
    if stride * (levels - 1) != nt - 1:
        parser.error(f"--levels must be 1 + a divisor of {nt - 1}")

    candidates = burgers1d.parameter_grid(*grid)
    corners = box_corners(candidates)
    fom = burgers1d.solve(corners, nx=nx, nt=nt, progress=False)
    times = fom.times[::stride]
    U = torch.as_tensor(fom.snapshots[:, ::stride], dtype=torch.float32)
    u0 = burgers1d.initial_condition(candidates, fom.coords["x"]).astype(np.float32)

    config = ROMConfig(
        autoencoder=AutoencoderConfig(hidden=(100,), latent_dim=5, activation="sigmoid"),
        stage1=Stage1Config(fd_scheme="sbp12"),
        gp=GPConfig(kernel="rbf", length_scale_bounds=(1.4, 1000.0), n_restarts=10),
        seed=0,
    )
    torch.manual_seed(config.seed)
    autoencoder = Autoencoder(nx, (100,), 5, "sigmoid")
    rom = stage1_rom(autoencoder, U, corners, times, config)

    timings: dict[str, list[float]] = {"max_std": [], "coef_std": []}
    cpu_times: dict[str, list[float]] = {"max_std": [], "coef_std": []}
    first_pick = None
    for round_ in range(args.rounds):
        for criterion in timings:
            sampling = SamplingConfig(
                strategy="greedy", criterion=criterion, n_samples=args.samples
            )
            start, cpu = time.perf_counter(), time.process_time()
            picked = next_points(sampling, rom, candidates, u0, corners, seed=round_)
            timings[criterion].append(time.perf_counter() - start)
            cpu_times[criterion].append(time.process_time() - cpu)
            if first_pick is None and criterion == "max_std":
                first_pick = candidates[picked[0]].round(4).tolist()

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"levels={levels} nodes={nx} candidates={len(candidates) - len(corners)}")
    print(f"samples={args.samples} threads={args.threads}")
    for criterion, seconds in timings.items():
        every = " ".join(f"{s:.2f}" for s in seconds)
        print(f"{criterion}_round_s={statistics.median(seconds):.2f} (rounds: {every})")
        cpu = statistics.median(cpu_times[criterion])
        print(f"{criterion}_round_cpu_s={cpu:.2f} (CPU time of all threads)")
    print(f"pick={first_pick}")
    print(f"peak_rss_mb={peak_rss_mb:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
