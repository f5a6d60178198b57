"""``mlasdi-study budget``: an Optuna search for how to split a training budget between stages.

The search space (every trial samples every parameter, so that each completed trial enters TPE's
joint model and the fANOVA importances; a parameter its ``n_stages`` does not use is ignored):

==========================  ==============================================  =====================
parameter                   meaning                                         range
==========================  ==============================================  =====================
``n_stages``                number of stages                                int 1 .. ``max_stages``
``stage1_share``            stage-1 iterations / budget (n_stages >= 2)     uniform 0.2 .. 0.9
``stage2_share``            stage-2 share of the rest (n_stages = 3)        uniform 0.2 .. 0.8
``kappa``                   sine frequency of every residual stage          log-uniform 0.1 .. 30
``residual_width_mult``     residual widths = mult x mirrored stage-1       {0.5, 1, 2, 4}
==========================  ==============================================  =====================

Stage iterations are rounded to multiples of ``min_stage`` (default 100), every stage gets at
least ``min_stage`` and the last one the rest, so a trial trains exactly ``budget`` iterations.
The stage-1 architecture, latent size, training settings and model seed come from the spec (its
first mLaSDI architecture and latent size unless ``arch_index``/``latent_dim`` say otherwise).

Objective: r(mu) = max_t ||u - u~|| / ||u|| maximised over VALIDATION parameters, a deterministic
subset of the spec's training parameters held out from training (:func:`validation_split`); the
test-only parameters are never read by the search. With ``multi_objective`` the second objective
is the training wall time (all stages; evaluation excluded) and the result is a Pareto front.

Parallel scheme: plain Optuna ask/tell in the driver, one Ray actor per running trial. The actor
trains to the next report point (``report_points`` equally spaced totals of iterations, the same
for every trial so that a pruner compares like with like) and returns the validation error; the
driver reports it to Optuna and either prunes the trial (kills the actor) or asks for the next
point. Only the driver talks to the storage, so the default SQLite file works on a multi-node
cluster, Optuna's own pruners run unchanged and pruned trials are ``PRUNED`` in the study
(Ray Tune's OptunaSearch ignores Optuna pruners and ASHA-stopped trials show as ``COMPLETE``).

Resume: the study lives in its storage (``OUT/optuna.db`` by default, or any RDB URL); rerunning
the command loads it and runs trials until ``n_trials`` have finished (complete, pruned or
failed by an exception). Liveness uses Optuna's heartbeats: a trial whose heartbeat is older than
the grace period (its driver was killed) is marked ``FAIL`` and Optuna's retry callback enqueues its
parameters again, so no trial is lost. Several drivers may share one storage and finish
``n_trials`` together (:class:`~studies.budget.storage.SharedStudy`).

Modules: :mod:`~studies.budget.space` (search space), :mod:`~studies.budget.validation` (the
validation split), :mod:`~studies.budget.worker` (one trial), :mod:`~studies.budget.driver` (the
ask/tell loop), :mod:`~studies.budget.storage` (Optuna storage, heartbeats, the lock shared by drivers),
:mod:`~studies.budget.outputs` (files in ``--out``) and :mod:`~studies.budget.cli`.
"""

from mlasdi.validation import validation_split
from studies.budget.cli import add_budget_command
from studies.budget.driver import run_search
from studies.budget.outputs import best_spec, format_summary, trials_table, write_outputs
from studies.budget.space import (
    WIDTH_MULTS,
    BudgetError,
    Candidate,
    SearchSetup,
    candidate_of,
    check_arguments,
    rom_config,
    round_to,
    stage_iters,
)
from studies.budget.storage import open_storage
from studies.budget.validation import SearchData, search_data
from studies.budget.worker import TrialWorker

__all__ = [
    "WIDTH_MULTS",
    "BudgetError",
    "Candidate",
    "SearchData",
    "SearchSetup",
    "TrialWorker",
    "add_budget_command",
    "best_spec",
    "candidate_of",
    "check_arguments",
    "format_summary",
    "open_storage",
    "rom_config",
    "round_to",
    "run_search",
    "search_data",
    "stage_iters",
    "trials_table",
    "validation_split",
    "write_outputs",
]
