"""How to share the GP fit among CPUs: sequential, a forked process pool, a spawned process
pool, or a thread pool, on a realistic size.

The fit (:meth:`mlasdi.interpolation.CoefficientGP.fit`) is one independent scikit-learn GP
per latent-dynamics coefficient: latent size 10 gives r (r + 1) = 110 GPs, each with 4
restarts of L-BFGS-B on 25 training parameters (the Vlasov presets' 5 x 5 training grid), all
Python-bound. A forked pool is what the fit used; fork after threads (torch's, Ray's) can
deadlock on a lock another thread held at the fork, so it is measured for reference only.
Prints the median wall time of each way and its ratio to the sequential fit.

    python benchmarks/gp_fit_workers.py [--repeats 3] [--workers 2] [--latent 10]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

from mlasdi.config import GPConfig
from mlasdi.interpolation import CoefficientGP


def _one_gp(args: tuple[np.ndarray, np.ndarray, int]) -> np.ndarray:
    params, column, seed = args
    return CoefficientGP(GPConfig(), seed).fit(params, column[:, None]).state()["kernel_theta"]


def fit_with(executor: Executor | None, params: np.ndarray, coefficients: np.ndarray) -> list:
    """One GP per coefficient column, through ``executor`` (None: in this thread)."""
    jobs = [(params, coefficients[:, i], i) for i in range(coefficients.shape[1])]
    if executor is None:
        return [_one_gp(job) for job in jobs]
    return list(executor.map(_one_gp, jobs, chunksize=max(1, len(jobs) // 8)))


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latent", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    a, w = np.meshgrid(np.linspace(0.7, 0.9, 5), np.linspace(0.9, 1.1, 5), indexing="ij")
    params = np.column_stack([a.ravel(), w.ravel()])
    n_coef = args.latent * (args.latent + 1)
    # Smooth coefficients over the parameter box, as trained ones are, plus a little noise.
    weights = rng.standard_normal((3, n_coef))
    coefficients = (
        np.sin(3 * params[:, :1]) * weights[0]
        + np.cos(2 * params[:, 1:]) * weights[1]
        + 0.01 * rng.standard_normal((params.shape[0], 1)) * weights[2]
    )
    n = args.workers

    def pool(method: str) -> Callable[[], object]:
        def run() -> object:
            context = multiprocessing.get_context(method)
            with ProcessPoolExecutor(max_workers=n, mp_context=context) as executor:
                return fit_with(executor, params, coefficients)

        return run

    def threads() -> object:
        with ThreadPoolExecutor(max_workers=n) as executor:
            return fit_with(executor, params, coefficients)

    ways: dict[str, Callable[[], object]] = {
        "sequential": lambda: fit_with(None, params, coefficients),
        "threads": threads,
        "spawn": pool("spawn"),
        "forkserver": pool("forkserver"),
        "fork": pool("fork"),
    }
    load = os.getloadavg()
    print(
        f"{n_coef} GPs, 25 training parameters, {n} workers, median of {args.repeats}; "
        f"load average {load[0]:.1f} on {os.cpu_count()} CPUs"
    )
    seconds = {name: median_seconds(fn, args.repeats) for name, fn in ways.items()}
    for name, s in seconds.items():
        print(f"{name:>11}: {s:6.2f} s  ratio to sequential {s / seconds['sequential']:.2f}")


if __name__ == "__main__":
    main()
