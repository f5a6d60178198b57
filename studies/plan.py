"""The trials of a study and what each trains (pure: no Ray, no torch, no data).

One trial per (method, architecture, latent size, seed). Its budgets (per-stage iteration counts,
the same number of stages for each) form a prefix tree, trained as one :class:`Run` per node:

* stage 1 runs once, to its largest budget;
* for every distinct prefix ``(s1, ..., sk)`` that some budget continues, ONE stage-(k+1) run is
  branched from the stage-k model at that prefix and trained to the largest next-stage count of
  the budgets sharing the prefix;
* every run stops at each count a budget needs on the way. GPLaSDI is evaluated at each stage-1
  budget; mLaSDI (25k, 25k) and (25k, 50k) share a residual run, and (10k, 5k, 5k) and
  (10k, 5k, 8k) share their stage-2 model and a stage-3 run.

Compute is counted as the GEMM floor of an iteration, ``6 x n_snapshots x weights trained`` (a
forward and backward pass over every training snapshot): stage 1 trains encoder + decoder, a
residual stage only its decoder (every residual stage has the same widths). The naive count
trains every budget's stages from scratch. ``mlasdi_val`` runs the same tree (its residual stages
train on the fit split, a subset of the training snapshots, so its count is an upper bound).

Trials whose stage 1 is the same model (the same stage-1 configuration: architecture, latent size,
seed and training settings, and the same held-out split) form one :class:`TrialGroup`: ``mlasdi``
and ``mlasdi_val`` of one architecture, latent size and seed (and ``gplasdi`` too where it has the
same architecture). A group is what Ray Tune runs: stage 1 is trained once, to the largest stage-1
budget of its trials, and each trial's residual runs branch from the same stage-1 models. Its
compute is counted once, with the group's first trial; the others list 0 stage-1 iterations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from studies.spec import StudySpec, hidden_label


def mlp_weights(widths: Sequence[int]) -> int:
    """Weights + biases of a fully connected network ``widths[0] -> ... -> widths[-1]``."""
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))


@dataclass(frozen=True)
class Run:
    """One training run of stage ``len(prefix) + 1``, branched from the model trained to
    ``prefix`` (``()``: stage 1, from scratch); it stops at ``stops`` (iterations of this stage,
    ascending) on the way to the budgets ``indices`` of the trial of method ``branch`` (in a
    group's schedule; the budgets of all its trials for a stage-1 run, listed as ``()`` there:
    see :meth:`TrialGroup.schedule`)."""

    prefix: tuple[int, ...]
    stops: tuple[int, ...]
    indices: tuple[int, ...]
    branch: str = ""

    @property
    def stage(self) -> int:
        return len(self.prefix) + 1

    @property
    def until(self) -> int:
        return self.stops[-1]


@dataclass(frozen=True)
class Trial:
    """One (method, architecture, latent size, seed) and the budgets it is evaluated at."""

    study: str
    method: str
    arch_index: int
    hidden: tuple[int, ...]
    latent_dim: int
    seed: int
    budgets: tuple[tuple[int, ...], ...]
    residual_hidden: tuple[int, ...] = ()
    sampling: str = "fixed"  # where its training points come from (SamplingConfig.strategy)

    @property
    def trial_id(self) -> str:
        # Fixed trials keep the ids they had before sampling became a study dimension.
        suffix = "" if self.sampling == "fixed" else f"-{self.sampling}"
        return f"{self.method}-a{self.arch_index}-l{self.latent_dim}-s{self.seed}{suffix}"

    def evaluation_id(self, budget_index: int) -> str:
        return f"{self.trial_id}/b{budget_index}"

    @property
    def evaluation_ids(self) -> list[str]:
        return [self.evaluation_id(i) for i in range(len(self.budgets))]

    def stage1_weights(self, n_state: int) -> int:
        widths = [n_state, *self.hidden, self.latent_dim]
        return mlp_weights(widths) + mlp_weights(widths[::-1])

    def residual_weights(self, n_state: int) -> int:
        return mlp_weights([self.latent_dim, *self.residual_hidden, n_state])

    def n_model_params(self, budget_index: int, n_state: int) -> int:
        """Parameters of the networks used at prediction (== MultiStageROM.n_model_params)."""
        n_residual = len(self.budgets[budget_index]) - 1
        return self.stage1_weights(n_state) + n_residual * self.residual_weights(n_state)

    def schedule(self, pending: Sequence[int] | None = None) -> list[Run]:
        """The runs that train the budgets in ``pending`` (default all), in the order they start:
        stage 1 first, each branch right after its parent stops at the branch point
        (lexicographic order of the prefixes)."""
        todo = sorted(range(len(self.budgets)) if pending is None else pending)
        prefixes = sorted({self.budgets[i][:k] for i in todo for k in range(len(self.budgets[i]))})
        runs = []
        for prefix in prefixes:
            indices = tuple(i for i in todo if self.budgets[i][: len(prefix)] == prefix)
            stops = tuple(sorted({self.budgets[i][len(prefix)] for i in indices}))
            runs.append(Run(prefix, stops, indices))
        return runs

    def cost(self, stage1: int, residual: int, n_state: int, n_snapshots: int) -> int:
        """The compute of ``stage1`` and ``residual`` iterations of this trial's networks."""
        return (
            6
            * n_snapshots
            * (stage1 * self.stage1_weights(n_state) + residual * self.residual_weights(n_state))
        )

    def shared_cost(
        self, n_state: int, n_snapshots: int, pending: Sequence[int] | None = None
    ) -> tuple[int, int, int]:
        """(stage-1 iterations, residual iterations, compute) of this trial's schedule (of the
        budgets ``pending`` only: default all)."""
        if pending is not None and not len(pending):
            return 0, 0, 0
        stage1, *residual = self.schedule(pending)
        s1, s_res = stage1.until, sum(run.until for run in residual)
        return s1, s_res, self.cost(s1, s_res, n_state, n_snapshots)

    def naive_cost(self, n_state: int, n_snapshots: int) -> tuple[int, int, int]:
        """The same for training every budget's stages from scratch."""
        s1 = sum(b[0] for b in self.budgets)
        s_res = sum(sum(b[1:]) for b in self.budgets)
        return s1, s_res, self.cost(s1, s_res, n_state, n_snapshots)

    def to_config(self) -> dict[str, Any]:
        """The JSON-ready description a Tune trial receives."""
        return {
            "trial_id": self.trial_id,
            "study": self.study,
            "method": self.method,
            "arch_index": self.arch_index,
            "hidden": list(self.hidden),
            "latent_dim": self.latent_dim,
            "seed": self.seed,
            "budgets": [list(b) for b in self.budgets],
            "residual_hidden": list(self.residual_hidden),
            "sampling": self.sampling,
        }

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> Trial:
        return cls(
            study=c["study"],
            method=c["method"],
            arch_index=int(c["arch_index"]),
            hidden=tuple(c["hidden"]),
            latent_dim=int(c["latent_dim"]),
            seed=int(c["seed"]),
            budgets=tuple(tuple(b) for b in c["budgets"]),
            residual_hidden=tuple(c["residual_hidden"]),
            sampling=c.get("sampling", "fixed"),
        )


@dataclass(frozen=True)
class TrialGroup:
    """Trials (one per method, in spec order) that train one stage 1 between them: what one Ray
    Tune trial runs. Each trial keeps its id, evaluation ids and rows."""

    trials: tuple[Trial, ...]

    @property
    def group_id(self) -> str:
        """The trial ids joined by ``+`` (a lone trial's own id)."""
        return "+".join(t.trial_id for t in self.trials)

    @property
    def evaluation_ids(self) -> list[str]:
        """Every evaluation of its trials, in order."""
        return [e for t in self.trials for e in t.evaluation_ids]

    def trial(self, method: str) -> Trial:
        return next(t for t in self.trials if t.method == method)

    def schedule(self, pending: dict[str, Sequence[int]] | None = None) -> list[Run]:
        """The runs that train the budgets ``pending[method]`` of each trial (default all): one
        stage-1 run to every stage-1 stop any of them needs, then each trial's residual runs
        (:meth:`Trial.schedule`), labelled with its method as their ``branch``."""
        todo = {
            t.method: t.schedule(None if pending is None else pending.get(t.method, ()))
            for t in self.trials
        }
        firsts = [runs[0] for runs in todo.values() if runs]
        if not firsts:
            return []
        stops = tuple(sorted({s for run in firsts for s in run.stops}))
        stage1 = Run((), stops, firsts[0].indices if len(firsts) == 1 else ())
        return [stage1, *(replace(r, branch=m) for m, runs in todo.items() for r in runs[1:])]

    def costs(self, n_state: int, n_snapshots: int) -> list[tuple[int, int, int]]:
        """(stage-1 iterations, residual iterations, compute) of each trial in the group's
        schedule: the shared stage 1 (to the largest stage-1 budget) counted with the first."""
        schedules = [t.schedule() for t in self.trials]
        until = max(runs[0].until for runs in schedules)
        out = []
        for k, (t, runs) in enumerate(zip(self.trials, schedules, strict=True)):
            s1, s_res = (until if k == 0 else 0), sum(run.until for run in runs[1:])
            out.append((s1, s_res, t.cost(s1, s_res, n_state, n_snapshots)))
        return out

    def to_config(self) -> dict[str, Any]:
        """The JSON-ready description a Tune trial receives."""
        return {"group_id": self.group_id, "trials": [t.to_config() for t in self.trials]}

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> TrialGroup:
        return cls(tuple(Trial.from_config(t) for t in c["trials"]))


def stage1_key(spec: StudySpec, t: Trial) -> tuple[Any, ...]:
    """What makes a trial's stage 1 the model it is: its stage-1 configuration (iterations
    aside, unless the learning rate follows a schedule over them) and the held-out split that
    its checkpoint selection and ``mlasdi_val``'s acceptance use, and where its training points
    come from (a greedy stage 1 grows its own set, by its method's settings)."""
    config = spec.rom_config(
        hidden=t.hidden, latent_dim=t.latent_dim, seed=t.seed, stage_iters=(1,), method=t.method
    )
    iters = t.schedule()[0].until if config.stage1.lr_schedule != "constant" else None
    sampling = spec.sampling_for(t.method) if t.sampling == "greedy" else None
    return (config, iters, spec.method(t.method).val_fraction, sampling)


def groups(spec: StudySpec) -> list[TrialGroup]:
    """The trials of the study (:func:`trials`) in groups that share stage 1 (spec order of
    their first trials)."""
    by_key: dict[tuple[Any, ...], list[Trial]] = {}
    for t in trials(spec):
        by_key.setdefault(stage1_key(spec, t), []).append(t)
    return [TrialGroup(tuple(members)) for members in by_key.values()]


def n_train_points(spec: StudySpec) -> int:
    """Training parameters of the spec's data (from its source, no data generated)."""
    return spec.data.n_train()


def trials(spec: StudySpec) -> list[Trial]:
    """Every trial of the study, in spec order (method, architecture, latent size, seed,
    sampling strategy)."""
    out = []
    for m in spec.methods:
        for a, hidden in enumerate(m.hidden):
            residual = m.residual_widths(hidden) if m.name != "gplasdi" else ()
            for r in m.latent_dims:
                for s in spec.seeds:
                    for how in spec.strategies:
                        out.append(
                            Trial(spec.name, m.name, a, hidden, r, s, m.budgets, residual, how)
                        )
    return out


@dataclass(frozen=True)
class PlanLine:
    trial: Trial
    shared: tuple[int, int, int]
    naive: tuple[int, int, int]


def plan(spec: StudySpec, all_groups: list[TrialGroup] | None = None) -> list[PlanLine]:
    """One line per trial; ``all_groups``: the spec's :func:`groups`, if the caller has them."""
    n_state = spec.data.n_state
    n_snap = n_train_points(spec) * spec.data.n_train_times
    return [
        PlanLine(t, shared, t.naive_cost(n_state, n_snap))
        for g in (groups(spec) if all_groups is None else all_groups)
        for t, shared in zip(g.trials, g.costs(n_state, n_snap), strict=True)
    ]


def format_plan(spec: StudySpec) -> str:
    """The text of ``mlasdi-study plan``; the last line is ``compute_fraction_of_naive=<x>``."""
    all_groups = groups(spec)
    lines = plan(spec, all_groups)
    n_train = n_train_points(spec)
    d = spec.data
    tested = f" (errors over {d.n_times})" if d.n_train_times != d.n_times else ""
    out = [
        f"study {spec.name}: {len(lines)} trials, "
        f"{sum(len(p.trial.budgets) for p in lines)} evaluations; data {d.problem} "
        f"state {d.n_state}, {n_train} training points x {d.n_train_times} snapshots{tested}",
        "compute = 6 x n_snapshots x weights trained per iteration (GEMM floor); "
        "naive = every budget trained from scratch",
        f"{'trial':<22} {'hidden':<14} {'stage-1 it':>10} {'residual it':>11} "
        f"{'naive it':>10} {'compute':>10} {'naive':>10}",
    ]
    for p in lines:
        t = p.trial
        out.append(
            f"{t.trial_id:<22} {hidden_label(t.hidden):<14} {p.shared[0]:>10} {p.shared[1]:>11} "
            f"{p.naive[0] + p.naive[1]:>10} {p.shared[2]:>10.3g} {p.naive[2]:>10.3g}"
        )
    shared = [g for g in all_groups if len(g.trials) > 1]
    if shared:
        out.append(
            f"{len(shared)} groups of trials train one stage 1 between them, counted with the "
            f"first trial of each (e.g. {shared[0].group_id})"
        )
    it_shared = sum(p.shared[0] + p.shared[1] for p in lines)
    it_naive = sum(p.naive[0] + p.naive[1] for p in lines)
    c_shared = sum(p.shared[2] for p in lines)
    c_naive = sum(p.naive[2] for p in lines)
    for method in sorted({p.trial.method for p in lines}):
        sub = [p for p in lines if p.trial.method == method]
        out.append(
            f"{method}: iterations {sum(p.shared[0] + p.shared[1] for p in sub)} of "
            f"{sum(p.naive[0] + p.naive[1] for p in sub)} naive, compute "
            f"{sum(p.shared[2] for p in sub) / sum(p.naive[2] for p in sub):.4f} of naive"
        )
    out.append(f"total iterations {it_shared} vs naive {it_naive}")
    out.append(f"iteration_fraction_of_naive={it_shared / it_naive:.4f}")
    out.append(f"total compute {c_shared:.4g} vs naive {c_naive:.4g} (FLOP floor)")
    out.append(f"compute_fraction_of_naive={c_shared / c_naive:.4f}")
    return "\n".join(out)
