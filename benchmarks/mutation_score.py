"""Mutation score of the numerics' tests: mutmut on mlasdi/dynamics.py, mlasdi/train.py and
analysis/factors.py. Each mutant runs the tests that run the mutated function, among the test
files listed for the modules (``TARGETS``).

Not part of CI: a full run is about 2000 mutants at 1-5 s each (more on a busy machine).
``--sample N`` tests a seeded random sample of N mutants per file; the score of a sample
estimates the file's score, with the binomial standard error printed beside it. Choose N so
that the run ends within ``--timeout``: mutmut tests the mutants with the fastest tests first,
so a run cut short counts mostly those. ``--names FILE`` tests the mutants named in FILE (one
a line), e.g. the ones an earlier run tested, to compare two versions of the code.

mutmut reads its settings from ``pyproject.toml`` and writes its mutants beside it, so the
project is copied into ``--workdir`` (kept between runs: mutmut caches its test coverage there)
with the settings added, and the score is read from mutmut's result files.

    python benchmarks/mutation_score.py --sample 40 --timeout 900
    python benchmarks/mutation_score.py --source /path/to/other/checkout --workdir /tmp/mm-old

Prints, per file: mutants tested, killed (a test failed, or the mutant timed out or crashed),
survived (every test passed, or no test ran the mutated function), the score killed / tested
and the surviving mutants' names (``mutmut show NAME`` in ``<workdir>/project`` shows one).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# module -> the test files that exercise it
TARGETS = {
    "mlasdi/dynamics.py": ["tests/test_dynamics.py", "tests/test_rom.py"],
    "mlasdi/train.py": ["tests/test_rom.py", "tests/test_recipe.py", "tests/test_acceptance.py"],
    "analysis/factors.py": ["tests/test_analysis.py"],
}
COPIED = ["mlasdi", "studies", "analysis", "tests", "pyproject.toml"]
# mutmut's exit codes (mutmut.stats.status_by_exit_code): None not tested, 0 survived,
# 33 / 5 no test ran the mutant, 34 skipped; the rest (1 and 3 a failing test, 36 and the
# signals a timeout, -11 / -9 a crash) kill it.
NOT_TESTED = {None, 34}
SURVIVED = {0, 5, 33}
NO_MUTANT = "no-such-mutant"


def settings(targets: dict[str, list[str]]) -> str:
    tests = sorted({t for files in targets.values() for t in files})
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["mlasdi", "analysis"]\n'
        f"only_mutate = {json.dumps(list(targets))}\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'also_copy = ["studies"]\n'
        # torch's thread pools do not survive a fork of a process that used them: mutmut forks
        # each mutant's worker from a server that has imported the tests but run nothing.
        'process_isolation = "forkserver"\n'
    )


def prepare(source: Path, project: Path) -> None:
    """Copy the project's code and tests into ``project`` (keeping mutmut's cache there)."""
    project.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        target = project / name
        if target.is_dir():
            shutil.rmtree(target)
        if (source / name).is_dir():
            shutil.copytree(source / name, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source / name, target)
    with (project / "pyproject.toml").open("a") as f:
        f.write(settings(TARGETS))


def mutmut(project: Path, names: list[str], jobs: int, timeout: float | None) -> None:
    command = ["nice", "mutmut", "run", "--max-children", str(jobs), *names]
    # Its own session, so that a timeout stops mutmut's forked workers with it.
    child = subprocess.Popen(
        command,
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if names == [NO_MUTANT] else None,
        start_new_session=True,
    )
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait()
        print(f"(stopped after {timeout:.0f} s; the mutants tested so far are counted)")


def results(project: Path) -> dict[str, dict[str, int | None]]:
    """{module path: {mutant name: exit code}} from mutmut's result files."""
    return {
        path: json.loads((project / "mutants" / f"{path}.meta").read_text())["exit_code_by_key"]
        for path in TARGETS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to test")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mlasdi-mutation"))
    parser.add_argument("--sample", type=int, default=0, help="mutants per file (0: all)")
    parser.add_argument(
        "--names", type=Path, help="file of mutant names: test only those (that still exist)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--timeout", type=float, default=None, help="seconds for the run")
    parser.add_argument(
        "--keep-results",
        action="store_true",
        help="do not test again the mutants with a result in --workdir (same code and tests)",
    )
    args = parser.parse_args()
    if shutil.which("mutmut") is None:
        sys.exit("mutmut is not installed: pip install mutmut")
    project = args.workdir / "project"
    prepare(args.source.resolve(), project)
    start = time.perf_counter()
    # mutmut has no "generate only" command: a filter that matches nothing makes it generate the
    # mutants and record which tests run which function, then stop.
    mutmut(project, [NO_MUTANT], args.jobs, None)
    chosen: list[str] = []
    wanted = set(args.names.read_text().split()) if args.names else None
    for codes in results(project).values():
        # A seeded shuffle: a smaller sample is the start of a larger one.
        pool = sorted(n for n in codes if wanted is None or n in wanted)
        random.Random(args.seed).shuffle(pool)
        chosen += pool[: args.sample or None]
    # Named mutants are tested again even where a result is cached (the tests may have
    # changed), unless --keep-results.
    cached = {n for c in results(project).values() for n, v in c.items() if v not in NOT_TESTED}
    names = [n for n in chosen if not (args.keep_results and n in cached)]
    left = None if args.timeout is None else args.timeout - (time.perf_counter() - start)
    if names:
        mutmut(project, names, args.jobs, left)
    print(f"mutmut on {args.source}: {time.perf_counter() - start:.0f} s")
    sample = set(chosen)
    for path, codes in results(project).items():
        tested = {n: v for n, v in codes.items() if n in sample and v not in NOT_TESTED}
        survivors = sorted(n for n, v in tested.items() if v in SURVIVED)
        n, killed = len(tested), len(tested) - len(survivors)
        score = killed / n if n else float("nan")
        error = (score * (1 - score) / n) ** 0.5 if n and args.sample else 0.0
        print(
            f"{path}: {len(codes)} mutants, {n} tested, {killed} killed, {len(survivors)} "
            f"survived, score {score:.1%} +- {error:.1%}"
        )
        for name in survivors:
            print(f"    survived: {name}")


if __name__ == "__main__":
    main()
