"""FlatAdam (torch's functional fused Adam called directly) against the public
``torch.optim.Adam(fused=True)`` on one flat parameter, on the CPU.

The trainers step one flat float32 parameter holding every weight (``mlasdi.train.
flatten_parameters``). Sizes: 2e4 (the small studies' networks), 2e5 (GPLaSDI's Burgers
autoencoder, 201k weights), 4e5 (the Vlasov paper's mLaSDI autoencoder, 414k) and 4e6. The two
steps alternate block by block, so that the machine's load hits both alike. Prints the median
time per step of each, and their ratio.

    python benchmarks/flat_adam.py [--steps 200] [--blocks 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from mlasdi.train import FlatAdam

SIZES = (20_000, 200_000, 400_000, 4_000_000)


def block_seconds(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=7, help="timed blocks per optimiser")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"CPU, float32, {args.threads} thread(s), median of {args.blocks} blocks of "
        f"{args.steps} steps; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    for n in SIZES:
        torch.manual_seed(0)
        params = [torch.randn(n) for _ in range(2)]
        grads = [torch.randn(n) * 1e-3 for _ in range(2)]
        flat = FlatAdam(params[0], grads[0])
        param = torch.nn.Parameter(params[1])
        param.grad = grads[1]
        public = torch.optim.Adam([param], lr=1e-3, fused=True)

        def step_flat(flat: FlatAdam = flat) -> None:
            flat.step(1e-3)

        ways = {"FlatAdam": step_flat, "Adam(fused=True)": public.step}
        for step in ways.values():  # warm-up (the public optimiser's first step imports more)
            block_seconds(step, 5)
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.blocks):
            for name, step in ways.items():
                times[name].append(block_seconds(step, args.steps))
        medians = {name: statistics.median(t) for name, t in times.items()}
        print(
            f"n = {n:>9,}: FlatAdam {medians['FlatAdam'] * 1e6:8.1f} us, Adam(fused=True) "
            f"{medians['Adam(fused=True)'] * 1e6:8.1f} us per step; public / FlatAdam "
            f"{medians['Adam(fused=True)'] / medians['FlatAdam']:.2f}"
        )


if __name__ == "__main__":
    main()
