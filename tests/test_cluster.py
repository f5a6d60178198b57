"""Many machines: Tune storage on a multi-node Ray cluster, and resuming from a second directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pgserver
import pytest

from analysis.schema import read_results
from studies import run as R
from studies.cli import main
from studies.plan import trials
from studies.spec import SpecError, load_spec


def test_local_storage_is_refused_on_more_than_one_node(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert R.tune_storage(None, out, 1) == str(out / "tune")
    assert R.tune_storage("s3://bucket/prefix", out, 4) == "s3://bucket/prefix"
    with pytest.raises(SpecError, match="the Ray cluster has 2 nodes but the Tune storage"):
        R.tune_storage(None, out, 2)
    assert R.tune_storage(None, out, 2, allow_local=True) == str(out / "tune")
    assert "a trial retried on another node restarts from zero" in capsys.readouterr().out
    monkeypatch.setattr(R, "filesystem_type", lambda path: "nfs4")
    assert R.tune_storage(str(tmp_path / "nfs"), out, 2) == str(tmp_path / "nfs")


def test_filesystem_type_reads_the_longest_mount_point(tmp_path, monkeypatch):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\nserver:/export /shared nfs4 rw 0 0\n"
        "server:/export2 /shared/sub\\040dir lustre rw 0 0\n"
    )
    real_path = R.Path

    def fake_path(p="", *rest):  # noqa: ANN001, ANN202
        return real_path(mounts) if str(p) == "/proc/mounts" else real_path(p, *rest)

    monkeypatch.setattr(R, "Path", fake_path)
    assert R.filesystem_type(real_path("/home/u/out")) == "ext4"
    assert R.filesystem_type(real_path("/shared/study/tune")) == "nfs4"
    assert R.filesystem_type(real_path("/shared/sub dir/x")) == "lustre"
    assert R.filesystem_type(real_path("/sharedfoo")) == "ext4"


def test_a_ray_cluster_of_two_nodes_refuses_local_storage_before_writing(tmp_path, capsys):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out = tmp_path / "out"
    try:
        code = main(["run", "smoke", "--out", str(out), "--address", cluster.address, "-v", "0"])
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mlasdi-study: error: the Ray cluster has 2 nodes but the Tune storage")
    assert "--storage" in err and "s3://" in err and len(err.strip().splitlines()) == 1
    print(err.strip())
    assert not out.exists()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.slow  # 37 s on a busy 2-core machine
def test_resume_with_storage_on_a_second_directory(tmp_path, capsys, monkeypatch):
    out, shared = tmp_path / "out", tmp_path / "shared"
    args = ["run", "smoke", "--out", str(out), "--storage", str(shared), "-v", "0", "--no-report"]
    # A run killed before its end: its checkpoints and one file per evaluation are left (a
    # finished run deletes the checkpoints and compacts the files).
    with monkeypatch.context() as m:
        m.setattr(R, "prune_checkpoints", lambda *a: 0)
        m.setattr(R, "compact", lambda out: 0)
        assert main(args) == 0
    assert not (out / "tune").exists() and list(shared.glob("run-*/*/checkpoint_*"))
    # tuner.pkl holds no study data (it held the data captured by the results callback)
    (pkl,) = shared.glob("run-*/tuner.pkl")
    assert pkl.stat().st_size < 10_000
    ids = sorted(e for t in trials(load_spec("smoke")) for e in t.evaluation_ids)
    # Lose the last evaluation of a two-budget trial: the rerun continues from its checkpoint in
    # the second directory instead of training from zero.
    last = [e for e in ids if e.startswith("mlasdi")][-1]
    stem = last.replace("/", "__") + ".parquet"
    (out / "results" / stem).unlink()
    (out / "param_errors" / stem).unlink()
    n_records = (out / "trials.jsonl").read_text().count("\n")
    assert main(args) == 0
    assert "1 trials to run" in capsys.readouterr().out
    records = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    again = [r for r in records[n_records:] if r["kind"] == "eval"]
    assert [r["evaluation_id"] for r in again] == [last]
    assert again[0]["resumed_at"] > 0
    df = read_results(out)
    assert sorted(df["evaluation_id"]) == ids and df["evaluation_id"].is_unique
    # The study is complete: no checkpoint is left, and Tune's files are a few times the results.
    assert not list(shared.glob("run-*/*/checkpoint_*"))
    run = max(shared.glob("run-*"))  # this complete run's Tune directory
    assert _size(run) <= 5 * (_size(out / "results") + _size(out / "param_errors"))
    assert not list(run.glob("*/result.json"))  # Tune's copies of the rows are not written


ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_mounts_shared_storage_on_every_node():
    yaml = pytest.importorskip("yaml")
    text = (ROOT / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    # setup_commands run on the head and on every worker
    assert any("mount -t nfs4" in c and "/shared" in c for c in config["setup_commands"])
    assert "--storage /shared/tune" in text


# --- cluster.yaml through Ray's autoscaler (the fake multi-node provider) -----------------------


def fake_autoscaling_config(cluster_yaml: Path, gcs_address: str, *, max_workers: int = 2) -> dict:
    """cluster.yaml's node types for Ray's fake multi-node provider, scaled down to one machine:
    the head keeps its resources (0 CPUs: no trial runs there), each worker type keeps its GPUs
    and gets 1 CPU, 0 to ``max_workers`` of it."""
    import yaml

    real = yaml.safe_load(cluster_yaml.read_text())
    head = real["available_node_types"][real["head_node_type"]]
    types = {
        # the fake provider's head node type is always this name
        "ray.head.default": {"resources": head["resources"], "node_config": {}, "max_workers": 0}
    }
    for name, node in real["available_node_types"].items():
        if name == real["head_node_type"]:
            continue
        resources = {**node["resources"], "CPU": 1, "object_store_memory": 200 * 2**20}
        types[name] = {
            "resources": resources,
            "node_config": {},
            "min_workers": 0,
            "max_workers": max_workers,
        }
    empty: dict = {k: [] for k in ("initialization_commands", "setup_commands")}
    empty.update({k: [] for k in ("head_setup_commands", "worker_setup_commands")})
    empty.update({k: [] for k in ("head_start_ray_commands", "worker_start_ray_commands")})
    return {
        "cluster_name": "mlasdi-fake",
        "max_workers": max_workers,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": real.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": 5,
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        **empty,
    }


def _kill_processes_of(gcs_address: str) -> None:
    """End the processes of the cluster at ``gcs_address`` (and only those: their command lines
    name its port), by their ids."""
    import signal

    port = gcs_address.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f":{port}" in cmdline or f"--gcs_server_port={port}" in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_cluster_yaml_node_types_autoscale_a_smoke_study(tmp_path):
    """A fake cluster from cluster.yaml starts with no worker; the smoke study's trials (1 CPU
    each; the head has none) make the autoscaler start workers; every row is written once."""
    import shutil
    import subprocess
    import sys
    import time

    yaml = pytest.importorskip("yaml")
    ray_cli = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    import ray.util

    gcs = f"{ray.util.get_node_ip_address()}:{pgserver.free_port()}"
    config = tmp_path / "fake_cluster.yaml"
    config.write_text(yaml.safe_dump(fake_autoscaling_config(ROOT / "cluster.yaml", gcs)))
    out, shared = tmp_path / "out", tmp_path / "shared"
    # A throwaway cluster: no token authentication (Ray would share ~/.ray/auth_token with any
    # other cluster of this user), and the study runs in its own process.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    try:
        subprocess.run(
            [
                ray_cli,
                "start",
                "--head",
                f"--port={gcs.rsplit(':', 1)[1]}",
                "--num-cpus=0",
                "--num-gpus=0",
                f"--autoscaling-config={config}",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            env={**env, "RAY_FAKE_CLUSTER": "1"},
            check=True,
            capture_output=True,
            timeout=180,
        )
        study = subprocess.run(
            [sys.executable, "-m", "studies.cli", "run", "smoke", "--out", str(out)]
            + ["--address", gcs, "--storage", str(shared), "--no-resource-check", "-v", "0"]
            + ["--no-report"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        _kill_processes_of(gcs)
    wall = time.perf_counter() - start
    assert study.returncode == 0, study.stdout[-2000:] + study.stderr[-2000:]
    df = read_results(out)
    ids = sorted(e for t in trials(load_spec("smoke")) for e in t.evaluation_ids)
    assert sorted(df["evaluation_id"]) == ids and df["evaluation_id"].is_unique
    records = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    used = {r["node_id"] for r in records}
    head = "f" * 51 + "00000"  # the fake provider's head node id
    assert used and head not in used  # every trial ran on a worker the autoscaler started
    print(f"autoscaler: {len(used)} worker node(s), {len(df)} rows, {wall:.0f} s")
