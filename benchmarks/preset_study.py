"""Run a study preset end to end, as a user would, and print every figure the docs quote for it.

    python benchmarks/preset_study.py vlasov_cpu           # data + study + report, timed
    python benchmarks/preset_study.py vlasov_quick --out /tmp/vq
    python benchmarks/preset_study.py smoke --smoke        # the preset's --smoke version (CI)
    python benchmarks/preset_study.py vlasov_cpu --results results/vlasov_cpu   # figures only

It runs ``mlasdi-study run PRESET`` in a fresh working directory (so the data generation is part
of the wall time, as on a fresh machine; ``--data-dir`` reuses a data folder instead), then reads
the results with :mod:`analysis` and prints: the end-to-end wall time, the rows by status, the
best model of each method (lowest err_max), and for each method compared with GPLaSDI the median
factors with their bootstrap intervals and verdicts. Last lines are ``name=value`` pairs. The
figures quoted in README.md and docs/studies.md for a preset are this script's output, kept in
``benchmarks/results/<preset>.txt``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analysis import analyze
from analysis.labels import budget_label


def run_preset(preset: str, out: Path, workdir: Path, smoke: bool) -> float:
    """Wall seconds of ``mlasdi-study run PRESET --out OUT`` started in ``workdir``."""
    command = [sys.executable, "-m", "studies.cli", "run", preset, "--out", str(out), "-v", "0"]
    if smoke:
        command.append("--smoke")
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"preset_study: mlasdi-study run {preset} exited {done.returncode}")
    for line in done.stdout.splitlines():
        if line.startswith(("timing:", "data:", "status:")):
            print(line)
    return wall


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def summarise(out: Path) -> list[str]:
    """Print the best models and factors of the study in ``out``; return the name=value lines."""
    a = analyze(out)
    lines = []
    rows = a.results
    print(
        f"rows: {len(rows)} ({', '.join(f'{k} {v}' for k, v in rows['status'].value_counts().items())})"
    )
    print("best model of each method (lowest err_max; err_mean in brackets):")
    for method, group in a.usable.groupby("method", sort=False):
        best = group.loc[group["err_max"].idxmin()]
        iters = budget_label(list(best["stage_iters"]))
        print(
            f"  {method:10s} hidden {best['hidden']:>8s} latent {best['latent_dim']} seed "
            f"{best['seed']} {iters:>10s}: err_max {_pct(best['err_max'])} "
            f"({_pct(best['err_mean'])})"
        )
        lines.append(f"best_{method}_err_max={best['err_max']:.4g}")
    for method, c in a.comparisons.items():
        print(f"{method} against gplasdi (median factor GPLaSDI / {method}, 95 % interval):")
        for r in c.factors.itertuples():
            print(
                f"  {r.quantity:9s} {r.median_of_ratios:6.3f} [{r.mor_low:.3f}, {r.mor_high:.3f}]"
                f" over {r.n_pairs} pairs: {r.verdict}"
            )
            tag = r.quantity.removeprefix("err_")
            lines.append(f"factor_{method}_{tag}={r.median_of_ratios:.4g}")
            lines.append(f"verdict_{method}_{tag}={r.verdict.replace(' ', '_')}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", help="a preset name or spec file")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: a temp dir)"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="reuse this data/ folder")
    parser.add_argument("--smoke", action="store_true", help="the preset's --smoke version")
    parser.add_argument(
        "--results", type=Path, default=None, help="print the figures of this finished run only"
    )
    args = parser.parse_args(argv)
    if args.results is not None:
        print(*summarise(args.results), sep="\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="preset_study_") as tmp:
        workdir = Path(tmp)
        if args.data_dir is not None:
            (workdir / "data").symlink_to(args.data_dir.resolve(), target_is_directory=True)
        out = (args.out or workdir / "results").resolve()
        print(
            f"preset {args.preset}{' (--smoke)' if args.smoke else ''}: load average "
            f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} before the run"
        )
        wall = run_preset(args.preset, out, workdir, args.smoke)
        lines = summarise(out)
    print(f"end to end (data, study, report): {wall:.0f} s")
    print(*lines, f"preset_wall_s={wall:.1f}", sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
