"""Benchmark: what the uncertainty columns and greedy rounds add to a study trial (issue 20).

Runs every trial of a study spec (default the ``smoke`` preset) in this process, without Ray,
with ``[run] uncertainty_samples`` as ``--samples``, and prints per row ``eval_time_s`` (the
error evaluation), ``uq_time_s`` (the uncertainty columns, timed apart from it) and their ratio,
then the medians. ``--greedy`` also runs the greedy version of each trial (a round every
``--every`` iterations up to ``--max-points`` points) and prints each round's median seconds
(``round_time_s`` / picks) and the full-order share of it. Load the machine is under with
``uptime`` beside it: these are wall times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile

from mlasdi.study_data import load_study_data
from studies.plan import trials
from studies.spec import load_spec
from studies.trial import TrialRunner


def _rows(spec, data, cache: str) -> list[dict]:
    rows = []
    for t in trials(spec):
        reports: list = []
        TrialRunner(
            t, spec, data, frozenset(), lambda m, s, out=reports: out.append(m), fom_cache=cache
        ).run()
        rows += [json.loads(m["payload"])["row"] for m in reports if m["kind"] == "eval"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="smoke", help="spec file or preset (default smoke)")
    parser.add_argument("--samples", type=int, default=10, help="GP samples per test point")
    parser.add_argument("--greedy", action="store_true", help="also time greedy rounds")
    parser.add_argument("--every", type=int, default=10, help="iterations between rounds")
    parser.add_argument("--max-points", type=int, default=3, help="training points at most")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    spec = dataclasses.replace(
        spec, run=dataclasses.replace(spec.run, uncertainty_samples=args.samples)
    )
    if args.greedy:
        sampling = dataclasses.replace(
            spec.sampling, strategy="greedy", every=args.every, max_points=args.max_points
        )
        spec = dataclasses.replace(spec, strategies=("fixed", "greedy"), sampling=sampling)
    data = load_study_data(spec.data, progress=False)
    with tempfile.TemporaryDirectory() as cache:
        on = _rows(spec, data, cache)
    print(f"{'evaluation':<34} {'eval_time_s':>11} {'uq_time_s':>9} {'uq/eval':>7}")
    for r in on:
        ratio = r["uq_time_s"] / r["eval_time_s"]
        print(
            f"{r['evaluation_id']:<34} {r['eval_time_s']:>11.4f} {r['uq_time_s']:>9.4f} {ratio:>7.2f}"
        )
    print(f"uq_samples={args.samples}")
    print(f"median_eval_time_s={statistics.median(r['eval_time_s'] for r in on):.4f}")
    print(f"median_uq_time_s={statistics.median(r['uq_time_s'] for r in on):.4f}")
    print(
        f"median_uq_over_eval={statistics.median(r['uq_time_s'] / r['eval_time_s'] for r in on):.2f}"
    )
    if args.greedy:
        greedy = [r for r in on if r["sampling"] == "greedy" and r["picked_iters"]]
        last = {}
        for r in greedy:  # the last row of a trial holds all its rounds
            last[r["trial_id"]] = r
        per_round = [r["round_time_s"] / len(r["picked_iters"]) for r in last.values()]
        fom = [r["fom_time_s"] / r["round_time_s"] for r in last.values()]
        print(f"median_round_s={statistics.median(per_round):.4f}")
        print(f"median_fom_share_of_round={statistics.median(fom):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
