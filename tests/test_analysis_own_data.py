"""The README's own-data example, studied and analysed: the report speaks the file's names."""

from __future__ import annotations

import numpy as np
import pandas as pd
from helpers import eval_rows, run_trial

from analysis.cli import main
from analysis.report import analyze, headline_sentence
from mlasdi.data import SnapshotSet, save_snapshot_set
from mlasdi.study_data import load_study_data
from studies.plan import trials
from studies.results import write_evaluation
from studies.spec import dump_toml, load_spec, spec_from_dict, tomllib


def _own_study(tmp_path):
    """The README's SnapshotSet with parameters ("c", "nu") on a 3 x 3 grid, studied with the
    smoke spec's methods; returns the results directory."""
    c, nu = np.meshgrid([0.8, 1.0, 1.2], [0.1, 0.2, 0.3], indexing="ij")
    P = np.column_stack([c.ravel(), nu.ravel()])
    t = np.linspace(0.0, 1.0, 21)
    x = np.linspace(-1.0, 1.0, 32)
    U = np.stack(
        [np.sin(np.pi * (x[None] - ci * t[:, None])) * np.exp(-ni * t[:, None]) for ci, ni in P]
    )
    data = SnapshotSet(params=P, times=t, snapshots=U, param_names=("c", "nu"), coords={"x": x})
    save_snapshot_set(tmp_path / "my.h5", data)
    raw = load_spec("smoke").to_dict()
    raw["name"] = "own"
    raw["data"] = {"problem": "file", "file": str(tmp_path / "my.h5"), "train_index": [0, 2, 6, 8]}
    spec = spec_from_dict(tomllib.loads(dump_toml(raw)))
    study = load_study_data(spec.data)
    out = tmp_path / "results"
    for trial in trials(spec):
        for p in eval_rows(run_trial(spec, study, trial)).values():
            write_evaluation(out, p["row"], p["param_err"], study.params_test, study.is_train)
    return out


def test_own_data_report_uses_the_files_parameter_names_and_no_paper_numbers(tmp_path):
    out = _own_study(tmp_path)
    a = analyze(out, n_boot=50)
    assert a.param_names == ("c", "nu") and a.problem == "file" and not a.paper
    s = headline_sentence(a)
    assert "paper" not in s and "2.54" not in s
    report = tmp_path / "report"
    assert main([str(out), "--out", str(report), "--n-boot", "50"]) == 0
    md = (report / "report.md").read_text()
    assert "- data: problem `file`, parameters `c`, `nu`" in md
    assert "r(mu) over (c, nu) of the best model" in md
    for paper in ("paper", "2.54", "3.24", "5.91", "25k", "100k", "Vlasov", "`T`"):
        assert paper not in md, paper
    best = pd.read_csv(report / "tables" / "param_errors_best.csv")
    assert {"c", "nu"} <= set(best.columns) and "mu_0" not in best.columns
    assert sorted(set(best["c"])) == [0.8, 1.0, 1.2]
    # --param-names overrides what the rows record.
    assert analyze(out, n_boot=10, param_names=["speed", "viscosity"]).param_names == (
        "speed",
        "viscosity",
    )
