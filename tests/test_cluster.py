"""Many machines: Tune storage on a multi-node Ray cluster, and resuming from a second directory."""

from __future__ import annotations

import json
from pathlib import Path

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
    # A run killed before its end keeps its checkpoints (a finished run deletes them).
    with monkeypatch.context() as m:
        m.setattr(R, "prune_checkpoints", lambda *a: 0)
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
    assert _size(shared) <= 5 * (_size(out / "results") + _size(out / "param_errors"))


def test_cluster_yaml_mounts_shared_storage_on_every_node():
    yaml = pytest.importorskip("yaml")
    text = (Path(__file__).resolve().parents[1] / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    # setup_commands run on the head and on every worker
    assert any("mount -t nfs4" in c and "/shared" in c for c in config["setup_commands"])
    assert "--storage /shared/tune" in text
