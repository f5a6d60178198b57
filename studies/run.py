"""``mlasdi-study run``: schedule every trial of a spec on Ray Tune and keep the Parquet tidy.

Resume scheme (see docs/studies.md): the rows on disk are the truth. On start the driver reads the
finished evaluation ids from ``OUT/results`` and launches a fresh Tune experiment with only the
trials that still have work; each trial skips its finished budgets. A trial that an earlier,
killed run left mid-stage continues from that run's latest checkpoint of it (found under
``OUT/tune/``), and a trial whose node is lost within a run is retried by Tune
(``FailureConfig``) from its last checkpoint. Results files are named by evaluation id, so a
rewrite replaces instead of duplicating.

Why not ``Tuner.restore``: it resumes from the pickled Tuner (callbacks, param space) of the old
run, cannot drop trials that are finished, and a checkpoint it hands back may be newer than the
rows the killed driver wrote. Starting fresh and validating each checkpoint against the rows on disk
(``TrialRunner._usable_state``) is simpler and never loses or duplicates a row.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlasdi.data import SnapshotReader
from mlasdi.metrics import METHODS
from mlasdi.study_data import StudyData, load_study_data
from studies.plan import TrialGroup, groups
from studies.progress import RunLog, StudyProgress
from studies.results import ResultWriter, compact, finished_evaluations
from studies.spec import SpecError, StudySpec, check_resources, spec_from_dict, tomllib
from studies.trial import META_FILE, TrialRunner, run_trial

DATA_FINGERPRINT = "data.sha256"


def default_out(spec: StudySpec) -> Path:
    return Path("results") / spec.name


def _check_out(spec: StudySpec, out: Path) -> None:
    """OUT holds this study or nothing: never mix two specs' rows (reads only)."""
    path = out / "spec.toml"
    if path.is_file():
        old = spec_from_dict(tomllib.loads(path.read_text()), source=spec.source)
        if old != spec:
            raise SpecError(
                f"{out} holds results of a different spec ({path}); use another --out or delete it"
            )


def _check_data(spec: StudySpec, out: Path, fingerprint: str) -> None:
    """OUT's rows were made from these data (a user's file may have changed under its name)."""
    path = out / DATA_FINGERPRINT
    if fingerprint and path.is_file():
        old = path.read_text().strip()
        if old != fingerprint:
            raise SpecError(
                f"{out} holds results made from other data than "
                f"{getattr(spec.data, 'path', 'the [data] table')} now holds (sha256 "
                f"{old[:12]}... then, {fingerprint[:12]}... now); use another --out or delete it"
            )


def _write_spec(spec: StudySpec, out: Path, fingerprint: str) -> None:
    """Record the spec (and the data's fingerprint) in OUT: the first writes under OUT, once the
    data have been checked."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("spec.toml", spec.to_toml()), (DATA_FINGERPRINT, fingerprint)):
        path = out / name
        if text and not path.is_file():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)


def previous_checkpoints(storage: Path) -> dict[str, str]:
    """``{trial_id: checkpoint dir}``: the most advanced checkpoint of each trial left by earlier
    runs under ``storage`` (each checkpoint has a small ``trial_meta.json``)."""
    best: dict[str, tuple[list[int], float, str]] = {}
    if not storage.is_dir():
        return {}
    for meta_path in storage.glob(f"*/*/checkpoint_*/{META_FILE}"):
        try:
            meta = json.loads(meta_path.read_text())
            key = (list(meta["progress"]), meta_path.stat().st_mtime)
        except (OSError, ValueError, KeyError):
            continue
        trial_id = meta.get("trial_id", "")
        if trial_id not in best or key > best[trial_id][:2]:
            best[trial_id] = (*key, str(meta_path.parent))
    return {k: v[2] for k, v in best.items()}


def _previous_in(storage_root: str) -> dict[str, str]:
    """:func:`previous_checkpoints` of a local storage root (created here); none for a URI."""
    if "://" in storage_root:
        return {}
    Path(storage_root).mkdir(parents=True, exist_ok=True)
    return previous_checkpoints(Path(storage_root))


def prune_checkpoints(storage: Path, all_groups: list[TrialGroup], done: dict[str, str]) -> int:
    """Delete the Tune checkpoints of trial groups whose evaluations are all on disk (a resume
    never reads them: it skips finished groups); returns how many were deleted."""
    finished = {g.group_id for g in all_groups if all(e in done for e in g.evaluation_ids)}
    n = 0
    for meta_path in storage.glob(f"*/*/checkpoint_*/{META_FILE}"):
        try:
            trial_id = json.loads(meta_path.read_text()).get("trial_id", "")
        except (OSError, ValueError):
            continue
        if trial_id in finished:
            shutil.rmtree(meta_path.parent, ignore_errors=True)
            n += 1
    return n


def drop_tune_state(storage: Path) -> int:
    """Delete Tune's experiment-state files under ``storage`` once the study is complete: they
    hold every trial's last report (rows included; 470 kB for the main job) for
    ``Tuner.restore``, which a resume never uses (the rows on disk are the truth). Returns how
    many were deleted."""
    files = [
        *storage.glob("*/experiment_state-*.json"),
        *storage.glob("*/basic-variant-state-*.json"),
    ]
    for path in files:
        path.unlink(missing_ok=True)
    return len(files)


def _local_resources(num_cpus: int | None) -> dict[str, float]:
    import torch

    return {"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


# Filesystems every node of a cluster can mount (the type column of /proc/mounts).
SHARED_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph",
        "glusterfs", "afs", "panfs", "wekafs", "9p", "virtiofs",
        "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs",
        "fuse.ceph", "fuse.cephfs",
    }
)  # fmt: skip


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (longest mount point in /proc/mounts), or
    ``"unknown"`` where /proc/mounts is not readable."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    best, fstype = "", "unknown"
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, fstype = mount, fields[2]
    return fstype


def tune_storage(storage: str | None, out: Path, n_nodes: int, *, allow_local: bool = False) -> str:
    """Where Tune keeps trial checkpoints: ``storage`` or ``OUT/tune``; a local path resolved.

    Since Ray 2.7 Tune does not copy a node's checkpoints to the head node: on a cluster of more
    than one node a local path would strand each trial's checkpoints on the node that ran it (a
    trial retried elsewhere restarts from zero). That is refused (:class:`SpecError`) unless
    ``allow_local``, which prints the consequence.
    """
    root = storage or str(out / "tune")
    if "://" in root:
        return root  # s3://, gs://, ...: pyarrow's filesystems, shared by construction
    path = Path(root).resolve()
    fstype = filesystem_type(path)
    if n_nodes > 1 and fstype not in SHARED_FILESYSTEMS:
        if not allow_local:
            raise SpecError(
                f"the Ray cluster has {n_nodes} nodes but the Tune storage {path} is on a local "
                f"{fstype} filesystem: pass --storage with a directory every node mounts (NFS, "
                "Lustre, ...) or an s3:// or gs:// URI, or --allow-local-storage to run anyway"
            )
        print(
            f"warning: Tune storage {path} is local ({fstype}) on a {n_nodes}-node cluster "
            "(--allow-local-storage): each node keeps the checkpoints of the trials it runs, a "
            "trial retried on another node restarts from zero, and a rerun resumes only from "
            "checkpoints this node holds",
            flush=True,
        )
    return str(path)


def _slots(spec: StudySpec, todo: list[TrialGroup], nodes: list[dict[str, float]]) -> int:
    """How many of these trial groups fit on the cluster at once (for the overhead figure)."""
    if not todo:
        return 1
    need = max(
        (spec.resources.for_hidden(g.trials[0].hidden) for g in todo), key=lambda r: r["cpu"]
    )
    fit = 0
    for node in nodes:
        per = math.floor(node.get("CPU", 0) / need["cpu"] + 1e-9)
        if need["gpu"] > 0:
            per = min(per, math.floor(node.get("GPU", 0) / need["gpu"] + 1e-9))
        fit += per
    return max(1, min(fit, len(todo)))


def _summary(out: Path, spec: StudySpec) -> str:
    from analysis.schema import read_results

    try:
        df = read_results(out)
    except FileNotFoundError:
        return f"no results yet in {out / 'results'}"
    lines = [f"results: {len(df)} rows in {out / 'results'} (+ r(mu) in {out / 'param_errors'})"]
    counts = df.groupby(["method", "status"]).size()
    lines.append("status: " + ", ".join(f"{m} {s}: {n}" for (m, s), n in counts.items()))
    ok = df[df["status"] == "ok"]
    for method in METHODS:
        sub = ok[ok["method"] == method].sort_values("err_max")
        if sub.empty:
            continue
        lines.append(f"best {method} (lowest max error over the {len(sub)} ok rows):")
        for _, r in sub.head(3).iterrows():
            lines.append(
                f"  {r['evaluation_id']:<24} hidden {r['hidden']:<14} latent {r['latent_dim']} "
                f"iters {[int(x) for x in r['stage_iters']]}: err_max {r['err_max']:.4f} "
                f"err_mean {r['err_mean']:.4f} unseen_err_max {r['unseen_err_max']:.4f} "
                f"params {r['n_model_params']} train {r['train_time_s']:.1f}s"
            )
    return "\n".join(lines)


def _quiet_tune() -> None:
    """Tune's new console output (its tables go to the run log unless --verbose), and none of
    its automatic per-trial CSV/JSON/TensorBoard loggers: the results are in Parquet, and their
    TensorBoard hint would point at files nothing reads. Set either variable to override."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def _init_ray(address: str | None, num_cpus: int | None, verbose: int) -> None:
    import ray

    quiet: dict[str, Any] = {
        "log_to_driver": verbose >= 2,
        "logging_level": "ERROR",
        "include_dashboard": False,
        "configure_logging": True,
    }
    if address:
        ray.init(address=address, **quiet)
    else:
        res = _local_resources(num_cpus)
        # "local": start a new instance even when another Ray runs on this machine (plain
        # ray.init() joins it through /tmp/ray/ray_current_cluster and then rejects num_cpus).
        ray.init(address="local", num_cpus=int(res["CPU"]), num_gpus=int(res["GPU"]), **quiet)


def make_callback(writer: ResultWriter, spec: StudySpec, data: Any, progress: StudyProgress) -> Any:
    """The Tune callback of a study run (``StudyCallback`` below)."""
    from ray import tune

    class StudyCallback(tune.Callback):
        """Writes every evaluation report; a trial Tune gave up on gets ``failed`` rows. Each
        is shown on the progress line."""

        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
            writer.handle(trial.trial_id, result)
            progress.evaluation(result)

        def on_step_end(self, iteration, trials, **info):  # noqa: ANN001
            progress.refresh()

        def __reduce__(self) -> tuple[Any, tuple]:
            # Tune pickles its callbacks into OUT/tune/run-*/tuner.pkl for Tuner.restore, which
            # run_study never uses (see the module docstring). Pickled by value this closure
            # would carry the study data (22 MB of tuner.pkl for a small Vlasov study).
            return (tune.Callback, ())

        def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
            group = TrialGroup.from_config(trial.config["trial"])
            for t in group.trials:
                progress.trial_failed(t.trial_id)
            error = getattr(trial, "error_file", None) or "see the Tune trial logs"
            message = f"trial errored in Ray after retries ({error})"

            def report(metrics: dict[str, Any], state: Any) -> None:
                writer.handle(trial.trial_id, {**metrics, "compute_s": 0.0})

            done = set(writer.written) | set(finished_evaluations(writer.out))
            TrialRunner(group, spec, data, frozenset(done), report).report_bad("failed", message)

    return StudyCallback()


def _tested(data: StudyData) -> str:
    """How the test truth differs from the training snapshots, for the data line."""
    n_t = data.truth_test.shape[1]
    lazy = isinstance(data.truth_test, SnapshotReader)
    if n_t == data.U_train.shape[1] and not lazy:
        return ""
    read = f", read from {data.truth_test.path} in batches" if lazy else ""
    return f" (test: {n_t} snapshots{read})"


@dataclass(frozen=True)
class TuneOutcome:
    """What a Tune run of a study left: its row writer, the study wall time (``ray.init`` to the
    last result), the trial slots of the cluster, whether the user interrupted it, and the Tune
    storage."""

    writer: ResultWriter
    wall_s: float
    slots: int
    interrupted: bool
    storage_root: str


def _tuner(
    spec: StudySpec,
    data: StudyData,
    todo: list[TrialGroup],
    finished: set[str],
    out: Path,
    storage_root: str,
    callback: Any,
    verbose: int,
) -> Any:
    """The Tune experiment of the ``todo`` trial groups, each with its resources."""
    from ray import tune

    trainable = tune.with_parameters(
        run_trial,
        spec=spec,
        data=data,
        finished=frozenset(finished),
        previous=_previous_in(storage_root),
        fom_cache=str(out / "fom_cache"),
    )

    def resources(config: dict[str, Any]) -> Any:
        need = spec.resources.for_hidden(config["trial"]["trials"][0]["hidden"])
        bundle = {"CPU": need["cpu"]}
        if need["gpu"]:
            bundle["GPU"] = need["gpu"]
        return tune.PlacementGroupFactory([bundle])

    # with_resources mutates the function it wraps: wrap the fresh with_parameters object.
    trainable = tune.with_resources(trainable, resources)
    name = "run-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    return tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([t.to_config() for t in todo])},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_root,
            callbacks=[callback],
            verbose=max(1, verbose),
            failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def _tune_run(
    spec: StudySpec,
    data: StudyData,
    todo: list[TrialGroup],
    finished: set[str],
    out: Path,
    log: RunLog,
    address: str | None,
    storage: str | None,
    num_cpus: int | None,
    check: bool,
    verbose: int,
    allow_local_storage: bool,
) -> TuneOutcome:
    """Run the ``todo`` trials on Ray Tune, writing rows as they come and showing them on the
    progress line."""
    _quiet_tune()
    import ray

    t_study = time.perf_counter()
    _init_ray(address, num_cpus, verbose)
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if address and check:
            check_resources(spec, nodes, f"the cluster at {address}")
        storage_root = tune_storage(storage, out, len(nodes), allow_local=allow_local_storage)
        # The first writes under OUT: every check (spec, data, resources, storage) has passed.
        _write_spec(spec, out, data.fingerprint)
        log.start()
        writer = ResultWriter(out, data.params_test, data.is_train)
        # Longest trials first so the last slot does not idle at the end.
        n_state, n_snap = data.n_state, data.U_train.shape[0] * data.U_train.shape[1]
        todo.sort(key=lambda g: -sum(c[2] for c in g.costs(n_state, n_snap)))
        progress = StudyProgress(
            [t for g in todo for t in g.trials], set(finished), n_state, n_snap, log=log
        )
        callback = make_callback(writer, spec, data, progress)
        tuner = _tuner(spec, data, todo, finished, out, storage_root, callback, verbose)
        interrupted = False
        try:
            with log.capture(echo=verbose >= 1):
                tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        progress.close()
        wall = time.perf_counter() - t_study
        slots = _slots(spec, todo, nodes)
    finally:
        ray.shutdown()
    return TuneOutcome(writer, wall, slots, interrupted, storage_root)


def _wrap_up(
    spec: StudySpec,
    all_groups: list[TrialGroup],
    out: Path,
    outcome: TuneOutcome,
    log: RunLog,
    data_s: float,
    t_command: float,
) -> int:
    """Tidy the rows and the Tune storage after a run of the study's ``all_groups``, say what it
    cost and whether it is complete; the exit code of :func:`run_study`."""
    wall, compute = outcome.wall_s, outcome.writer.compute_s
    overhead = (wall - compute / outcome.slots) / wall if wall > 0 else float("nan")
    compact(out)
    done_now = finished_evaluations(out, retry_failed=False)
    evaluations = [e for g in all_groups for e in g.evaluation_ids]
    missing = [e for e in evaluations if e not in done_now]
    if "://" not in outcome.storage_root:
        prune_checkpoints(Path(outcome.storage_root), all_groups, done_now)
        if not missing:
            drop_tune_state(Path(outcome.storage_root))
    log.say(_summary(out, spec))
    log.say(
        f"timing: study wall {wall:.1f} s (ray.init to last result), trial compute "
        f"{compute:.1f} s over {outcome.slots} slot(s); data {data_s:.1f} s; command "
        f"{time.perf_counter() - t_command:.1f} s",
    )
    log.say(
        f"ray_overhead_fraction={overhead:.4f}  "
        "(= (study wall - trial compute / slots) / study wall)"
    )
    if outcome.interrupted or missing:
        log.say(
            f"study incomplete: {len(missing)} of {len(evaluations)} evaluations missing"
            f"{' (interrupted)' if outcome.interrupted else ''}; rerun the same command to finish",
            err=True,
        )
        return 130 if outcome.interrupted else 1
    return 0


def run_study(
    spec: StudySpec,
    *,
    out: Path,
    address: str | None = None,
    storage: str | None = None,
    num_cpus: int | None = None,
    check: bool = True,
    verbose: int = 0,
    allow_local_storage: bool = False,
) -> int:
    """Run (or finish) a study; returns the exit code (0 when every evaluation has a row).

    Nothing is written under ``out`` before the spec, the resources and the data have been
    checked (a bad data file raises :class:`~mlasdi.data.DataError`). The console shows one
    progress line (:mod:`studies.progress`); ``verbose`` 1 adds Ray Tune's tables, 2 its
    per-result output and the workers' logs; ``OUT/run.log`` keeps all of it.
    """
    t_command = time.perf_counter()
    out = Path(out).resolve()
    _check_out(spec, out)
    if not address and check:
        check_resources(spec, [_local_resources(num_cpus)], "this machine")
    all_groups = groups(spec)
    n_trials = sum(len(g.trials) for g in all_groups)
    n_evals = sum(len(g.evaluation_ids) for g in all_groups)
    compact(out)  # rows a killed run left one file each: one file to read from now on
    finished = finished_evaluations(out)
    todo = [g for g in all_groups if any(e not in finished for e in g.evaluation_ids)]
    log = RunLog(out)
    log.say(
        f"study {spec.name}: {n_trials} trials, {n_evals} evaluations; "
        f"{len(finished)} finished on disk, {sum(len(g.trials) for g in todo)} trials to run; "
        f"output {out}"
    )
    if not todo:
        print(_summary(out, spec))
        return 0

    t_data = time.perf_counter()
    data = load_study_data(spec.data, progress=True)
    data_s = time.perf_counter() - t_data
    _check_data(spec, out, data.fingerprint)
    log.say(
        f"data: {data.truth_test.shape[0]} test / {data.U_train.shape[0]} training parameters, "
        f"{data.U_train.shape[1]} snapshots of {data.n_state} values{_tested(data)} "
        f"({data_s:.1f} s)"
    )

    outcome = _tune_run(
        spec,
        data,
        todo,
        finished,
        out,
        log,
        address,
        storage,
        num_cpus,
        check,
        verbose,
        allow_local_storage,
    )
    return _wrap_up(spec, all_groups, out, outcome, log, data_s, t_command)
