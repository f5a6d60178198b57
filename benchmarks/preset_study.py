"""Run a study preset end to end, as a user would, and print every figure the docs quote for it.

    python benchmarks/preset_study.py vlasov_cpu           # data + study + report, timed
    python benchmarks/preset_study.py vlasov_quick --out /tmp/vq
    python benchmarks/preset_study.py smoke --smoke        # the preset's --smoke version (CI)
    python benchmarks/preset_study.py vlasov_cpu --results results/vlasov_cpu   # figures only

It runs ``mlasdi-study run PRESET`` in a fresh working directory (so the data generation is part
of the wall time, as on a fresh machine; ``--data-dir`` reuses a data folder instead), then reads
the results with :mod:`analysis` and prints: the end-to-end wall time, the peak memory of the
whole run (the proportional set size, PSS, summed over the command and every process it starts,
Ray's included, sampled every 0.5 s), the rows by status (each row, for a study of at most
``ROW_TABLE_MAX`` rows), the best model of each method (lowest err_max), and for each method
compared with GPLaSDI the median factors with their bootstrap intervals and verdicts. Last lines are ``name=value`` pairs. The
figures quoted in README.md and docs/studies.md for a preset are this script's output, kept in
``benchmarks/results/<preset>.txt``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from analysis import analyze
from analysis.labels import budget_label

ROW_TABLE_MAX = 12  # print every row of a study this small


def tree_pss(root: int) -> dict[int, tuple[int, str]]:
    """``{pid: (PSS bytes, command line)}`` of ``root``, its descendants and every process of
    its session (Ray's daemons among them), from /proc (processes without smaps_rollup left
    out)."""
    parents, sessions = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)], sessions[int(entry.name)] = int(fields[1]), int(fields[3])
    members = {pid for pid, sid in sessions.items() if sid == root} | {root}
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in members} - members
        members |= children
        grew = bool(children)
    out = {}
    for pid in members:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    out[pid] = (int(line.split()[1]) * 1024, command.strip())
                    break
        except OSError:
            continue
    return out


def process_kind(command: str) -> str:
    """A short name for a process of a study run: ``driver`` (the command), ``ray::<name>`` (a
    Ray worker: a trial's is ``ray::ImplicitFunc``), or the executable's name (Ray's daemons)."""
    if "studies.cli" in command:
        return "driver"
    if command.startswith("ray::"):
        return command.split()[0]
    words = command.split()
    named = [w for w in words if "raylet" in w or "gcs_server" in w or w.endswith(".py")]
    return Path((named or words or ["?"])[0]).name


def status_bytes(pid: int | str, key: str) -> int:
    """A memory field of /proc/<pid>/status in bytes (``pid`` may be ``"self"``): ``VmRSS``, or
    ``VmHWM``, the peak resident set so far (exact, where sampling can miss a short peak); 0 if
    the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PresetRun(NamedTuple):
    """What :func:`run_preset` measured; memory in MiB of PSS, kinds as :func:`process_kind`."""

    wall_s: float
    peak_mb: float  # of every process together
    at_peak: dict[str, float]  # each kind's share of that peak
    kind_peaks: dict[str, float]  # each kind's own peak over the run (a kind's processes summed)
    # each kind's largest process peak RSS (VmHWM, exact; a Ray worker counts under every kind
    # it was seen as, e.g. ray::ImplicitFunc.train and ray::IDLE)
    process_peaks: dict[str, float]


def run_preset(preset: str, out: Path, workdir: Path, smoke: bool) -> PresetRun:
    """Run ``mlasdi-study run PRESET --out OUT`` in ``workdir``, sampling its memory."""
    command = [sys.executable, "-m", "studies.cli", "run", preset, "--out", str(out), "-v", "0"]
    if smoke:
        command.append("--smoke")
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    child = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own session: the processes it starts are found by sid
    )
    peak: list = [0, {}]
    kind_peaks: dict[str, float] = {}
    process_peaks: dict[str, float] = {}
    finished = threading.Event()

    def sample() -> None:
        while not finished.wait(0.5):
            tree = tree_pss(child.pid)
            processes = tree.values()
            kinds: dict[str, float] = {}
            for pid, (pss, command) in tree.items():
                kind = process_kind(command)
                kinds[kind] = kinds.get(kind, 0.0) + pss / 2**20
                hwm = status_bytes(pid, "VmHWM") / 2**20
                process_peaks[kind] = max(hwm, process_peaks.get(kind, 0.0))
            for kind, mb in kinds.items():
                kind_peaks[kind] = max(mb, kind_peaks.get(kind, 0.0))
            total = sum(p for p, _ in processes)
            if total > peak[0]:
                peak[:] = [total, kinds]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    finished.set()
    sampler.join()
    wall = time.perf_counter() - start
    if child.returncode != 0:
        sys.stderr.write(stdout[-4000:] + stderr[-4000:])
        raise SystemExit(f"preset_study: mlasdi-study run {preset} exited {child.returncode}")
    for line in stdout.splitlines():
        if line.startswith(("timing:", "data:", "status:")):
            print(line)
    # What the user's terminal received (stdout and stderr): the progress line, not Tune's tables.
    print(f"console_lines={len(stdout.splitlines()) + len(stderr.splitlines())}")
    return PresetRun(wall, peak[0] / 2**20, peak[1], kind_peaks, process_peaks)


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
    if len(rows) <= ROW_TABLE_MAX:
        print("every row (errors over the test parameters: max / mean / median / min):")
        for r in rows.itertuples():
            print(
                f"  {r.method:10s} hidden {r.hidden:>8s} latent {r.latent_dim} seed {r.seed} "
                f"{budget_label(list(r.stage_iters)):>10s}: {_pct(r.err_max)} / {_pct(r.err_mean)}"
                f" / {_pct(r.err_median)} / {_pct(r.err_min)}; train {r.train_time_s:.0f} s, "
                f"eval {r.eval_time_s:.1f} s"
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
                f" over {r.n_pairs} pairs in {r.n_units} units: {r.verdict}"
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
        wall, peak_mb, *_ = run_preset(args.preset, out, workdir, args.smoke)
        lines = summarise(out)
    print(f"end to end (data, study, report): {wall:.0f} s, peak memory {peak_mb:.0f} MiB (PSS)")
    print(*lines, f"preset_wall_s={wall:.1f}", f"preset_peak_pss_mb={peak_mb:.0f}", sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
