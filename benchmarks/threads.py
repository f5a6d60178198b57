"""Wall time of ``mlasdi fit`` under thread settings, on the host as it is and under extra load.

Runs ``mlasdi fit --problem oscillator --stages 2 --iters 300,300 --no-figures --quiet`` in a fresh
process per run, the options interleaved round-robin so that a change in the host's load falls on
every option alike:

- ``cores``: torch threads = cores (torch's own default), OpenMP's default wait policy (spin
  about 3 ms, then sleep): torch is imported before mlasdi, so mlasdi cannot set the policy;
- ``cores_passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep at once);
- ``one``: ``OMP_NUM_THREADS=1`` (one torch thread, one OpenBLAS thread), torch imported first;
- ``default``: nothing set: what ``mlasdi fit`` does by itself (``--threads``, ``MLASDI_THREADS``
  and the OpenMP variables unset).

With ``--load N`` it first starts N busy-loop processes (one per core is a host whose cores are
all taken by another job) and stops them at the end.

    python benchmarks/threads.py [--repeats 3] [--load 0] [--options cores,one] [--smoke]

``--smoke`` makes one 2 + 2-iteration run of ``default`` (CI).

Prints one line per run, then ``threads_<option>_median_s=<number>`` per option.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORES = str(os.cpu_count() or 1)
OPTIONS: dict[str, dict[str, str]] = {
    "cores": {"MLASDI_THREADS": CORES},
    "cores_passive": {"MLASDI_THREADS": CORES, "OMP_WAIT_POLICY": "PASSIVE"},
    "one": {"MLASDI_THREADS": "1", "OMP_NUM_THREADS": "1"},
    "default": {},
}
# Options that load torch (and its OpenMP runtime) before mlasdi can choose the wait policy.
TORCH_FIRST = {"cores", "one"}
# Variables that would otherwise leak the caller's choice into every option.
CLEARED = ("MLASDI_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS")


def option_env(name: str) -> dict[str, str]:
    """The environment of one option: the caller's, less thread settings, plus the option's."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return env | OPTIONS[name]


def run_fit(name: str, iters: str, out: Path) -> float:
    """Wall time (s) of one ``mlasdi fit`` in a fresh interpreter under option ``name``."""
    first = "import torch; " if name in TORCH_FIRST else ""
    script = f"import sys; {first}from mlasdi.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", script, "fit", "--problem", "oscillator", "--stages", "2"]
    command += ["--iters", iters, "--out", str(out), "--no-figures", "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=option_env(name))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", type=int, default=0, help="busy-loop processes to add")
    parser.add_argument("--options", default="cores,cores_passive,one,default")
    parser.add_argument("--iters", default="300,300")
    parser.add_argument("--smoke", action="store_true", help="one 2+2-iteration default run")
    args = parser.parse_args()
    names = args.options.split(",")
    unknown = sorted(set(names) - set(OPTIONS))
    if unknown:
        parser.error(f"unknown options {unknown}; known: {sorted(OPTIONS)}")
    if args.smoke:  # one short run of what mlasdi fit does by itself, so that this never rots
        names, repeats, iters = ["default"], 1, "2,2"
    else:
        repeats, iters = args.repeats, args.iters
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for repeat in range(repeats):
                for name in names:
                    load = os.getloadavg()[0]
                    wall = run_fit(name, iters, Path(scratch) / f"{name}{repeat}")
                    times[name].append(wall)
                    print(f"run {repeat} {name}: {wall:.1f} s (load average before {load:.1f})")
    finally:
        for process in busy:
            process.kill()
            process.wait()
    for name in names:
        print(f"threads_{name}_median_s={statistics.median(times[name]):.1f}")


if __name__ == "__main__":
    main()
