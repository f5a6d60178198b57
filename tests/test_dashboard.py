"""optuna-dashboard opens a budget search from its storage URL (the live view, README)."""

from __future__ import annotations

import io
import json
import wsgiref.util

import optuna
import pytest

from studies import budget as B
from studies.spec import load_spec

optuna_dashboard = pytest.importorskip("optuna_dashboard", reason="pip install .[cluster]")


def _get(app, path: str) -> tuple[str, bytes]:  # noqa: ANN001
    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], body


def test_dashboard_reads_the_budget_study_back_from_its_storage(tmp_path):
    out = tmp_path / "search"
    B.run_search(load_spec("smoke"), 400, n_trials=2, out=out, use_ray=False, log=lambda _: None)
    url = f"sqlite:///{out / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url)
    try:
        app = optuna_dashboard.wsgi(storage)
        status, body = _get(app, "/api/studies")
        assert status.startswith("200")
        (study,) = json.loads(body)["study_summaries"]
        assert study["study_name"] == "budget-smoke-400"
        status, body = _get(app, f"/api/studies/{study['study_id']}")
        assert status.startswith("200")
        trials = json.loads(body)["trials"]
        stored = optuna.load_study(study_name="budget-smoke-400", storage=storage).trials
        assert [t["state"] for t in trials] == ["Complete", "Complete"]
        assert [t["values"][0] for t in trials] == pytest.approx([t.values[0] for t in stored])
    finally:
        storage.engine.dispose()
