"""Benchmark: what a trial's uncertainty columns add to its peak memory, against the chunk size.

Each row's uncertainty columns (:func:`mlasdi.uncertainty.assess`) decode every test parameter
x GP sample in chunks of about ``chunk_elements`` values. This builds the stage-1 ROM of a
randomly initialised autoencoder (hidden 75, latent 5, the size of ``vlasov_cpu``'s GPLaSDI) on
a preset's training data and assesses it on the test set with 10 samples, once per chunk size,
each in a fresh process, and prints the assessment's seconds and how much it raised the
process's peak resident memory (``resource.getrusage``): a study runs one such process per
concurrent trial, so the rise counts once per trial slot.

    python benchmarks/uncertainty_memory.py [--spec vlasov_cpu] [--chunks 33554432 4194304]
    python benchmarks/uncertainty_memory.py --smoke    # the data's smoke version (CI)

Last lines: ``peak_rise_mb_<chunk>=<x>`` and ``assess_s_<chunk>=<x>`` for each chunk size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def measure(spec_name: str, chunk_elements: int, smoke: bool) -> dict[str, float]:
    """In this process: the assessment's seconds and its rise of the peak RSS, in MiB."""
    import numpy as np
    import torch

    from mlasdi.config import AutoencoderConfig, GPConfig, ROMConfig
    from mlasdi.nn import Autoencoder
    from mlasdi.rom import stage1_rom
    from mlasdi.study_data import load_study_data
    from mlasdi.uncertainty import assess
    from studies.spec import load_spec

    torch.set_num_threads(1)
    source = load_spec(spec_name).data
    data = load_study_data(source.smoke() if smoke else source)
    U = torch.as_tensor(data.U_train, dtype=torch.float32)
    config = ROMConfig(
        autoencoder=AutoencoderConfig(hidden=(75,), latent_dim=5),
        gp=GPConfig(n_restarts=0),
        seed=0,
    )
    torch.manual_seed(config.seed)
    autoencoder = Autoencoder(U.shape[-1], (75,), 5)
    rom = stage1_rom(autoencoder, U, data.params_train, data.times, config)
    truth = np.asarray(data.truth_test)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    assess(rom, data.params_test, truth, n_samples=10, chunk_elements=chunk_elements)
    seconds = time.perf_counter() - start
    rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"assess_s": seconds, "peak_rise_mb": rise}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="vlasov_cpu", help="preset or spec file (its data)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[2**25, 2**22])
    parser.add_argument("--smoke", action="store_true", help="the data's smoke version (CI)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.spec, args.child, args.smoke)))
        return 0
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    print(f"spec {args.spec}, load average {os.getloadavg()[0]:.1f}")
    pairs = []
    for chunk in args.chunks:
        command = [sys.executable, __file__, "--spec", args.spec, "--child", str(chunk)]
        command += ["--smoke"] if args.smoke else []
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        figures = json.loads(done.stdout.splitlines()[-1])
        print(
            f"chunk {chunk} values: assessment {figures['assess_s']:.1f} s, "
            f"peak memory +{figures['peak_rise_mb']:.0f} MiB"
        )
        pairs += [
            f"peak_rise_mb_{chunk}={figures['peak_rise_mb']:.0f}",
            f"assess_s_{chunk}={figures['assess_s']:.2f}",
        ]
    print(*pairs, sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
