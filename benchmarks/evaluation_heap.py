"""Benchmark: an evaluation with and without ``mlasdi.runtime.large_blocks_mapped``.

A study trial evaluates each budget's ROM on the test set (``StudyData.test_errors``) and then
computes its uncertainty columns (``mlasdi.uncertainty.assess``, 10 GP samples). This fits a
stage-1 ROM (hidden 75, latent 5, 300 iterations; 20 with ``--smoke``) on a preset's training data and times that
pair of calls, alternating inside and outside ``large_blocks_mapped`` in one process (so both
see the same load), with each call's rise of the peak resident set (VmHWM, reset before each
call; Linux only). Outside, blocks come from the heap (after the first mapped call, with the
threshold glibc's own adjustment ends at, as in a trial after its first evaluation).

    python benchmarks/evaluation_heap.py --spec vlasov_cpu --params 81 --repeats 6
    python benchmarks/evaluation_heap.py --spec burgers1d_gplasdi --params 110 --repeats 2
    python benchmarks/evaluation_heap.py --smoke    # the data's smoke version, 2 calls (CI)

Last lines: ``<mode>_s`` and ``<mode>_rise_mb`` (medians) for ``heap`` and ``mapped``, and
``time_ratio`` (mapped / heap).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

from preset_study import status_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="vlasov_cpu", help="preset or spec file (its data)")
    parser.add_argument("--params", type=int, default=81, help="test parameters assessed")
    parser.add_argument("--repeats", type=int, default=4, help="calls in each mode")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="the data's smoke version (CI)")
    args = parser.parse_args(argv)

    import torch

    from mlasdi.fit import fit_rom
    from mlasdi.runtime import large_blocks_mapped, release_free_heap
    from mlasdi.study_data import load_study_data
    from mlasdi.uncertainty import assess
    from studies.spec import load_spec

    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    data = load_study_data(spec.data.smoke() if args.smoke else spec.data, progress=False)
    iters = 20 if args.smoke else 300
    config = spec.rom_config(hidden=(75,), latent_dim=5, seed=0, stage_iters=(iters,))
    rom = fit_rom(data.train_set(), config, device="cpu").rom
    n = min(args.params, data.params_test.shape[0])

    def evaluation() -> None:
        data.test_errors(rom, spec.run.eval_batch_size)
        assess(
            rom,
            data.params_test[:n],
            data.truth_test,
            u0=data.u0_test[:n],
            times=data.times_test,
            n_samples=10,
            seed=0,
            calibrated_scale=1.0,
        )

    seconds: dict[str, list[float]] = {"heap": [], "mapped": []}
    rises: dict[str, list[float]] = {"heap": [], "mapped": []}
    for repeat in range(1 if args.smoke else args.repeats):
        for mode in ("mapped", "heap") if repeat % 2 == 0 else ("heap", "mapped"):
            release_free_heap()
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            base = status_bytes("self", "VmRSS") / 2**20
            start = time.perf_counter()
            with large_blocks_mapped() if mode == "mapped" else contextlib.nullcontext():
                evaluation()
            seconds[mode].append(time.perf_counter() - start)
            rises[mode].append(status_bytes("self", "VmHWM") / 2**20 - base)
            print(f"{mode}: {seconds[mode][-1]:.1f} s, peak rise {rises[mode][-1]:.0f} MiB")
    for mode in seconds:
        print(f"{mode}_s={statistics.median(seconds[mode]):.2f}")
        print(f"{mode}_rise_mb={statistics.median(rises[mode]):.0f}")
    print(
        f"time_ratio={statistics.median(seconds['mapped']) / statistics.median(seconds['heap']):.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
