"""The numerics package stays light: no Ray, Optuna, pandas or matplotlib at import time."""

import json
import subprocess
import sys

FORBIDDEN = ("ray", "optuna", "pandas", "matplotlib")

# Imports every module of mlasdi by name (mlasdi.__main__ runs the CLI, so it is left out) and
# prints the forbidden top-level packages that ended up in sys.modules.
_SCRIPT = """
import importlib, json, pkgutil, sys
import mlasdi
names = ["mlasdi"] + sorted(
    m.name for m in pkgutil.walk_packages(mlasdi.__path__, "mlasdi.")
    if m.name != "mlasdi.__main__"
)
for name in names:
    importlib.import_module(name)
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps({"modules": names, "forbidden": loaded}))
"""


def _run(script: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(FORBIDDEN)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_every_mlasdi_module_loads_no_heavy_dependency():
    report = _run(_SCRIPT)
    for expected in ("mlasdi.cli", "mlasdi.rom", "mlasdi.problems.oscillator"):
        assert expected in report["modules"]
    # Importing all of them loads a superset of what importing any one of them loads.
    assert report["forbidden"] == []


def test_training_does_not_import_the_torch_compiler():
    # torch.optim's optimiser objects import torch._dynamo (about 1 s) on first use; the trainers
    # step Adam through torch's functional API, which does not.
    script = """
import json, sys, torch
from mlasdi.config import ResidualStageConfig
from mlasdi.train import ResidualTrainer
trainer = ResidualTrainer.create(
    torch.randn(2, 5, 3), torch.randn(2, 5, 8), ResidualStageConfig(hidden=(4,), iters=2), seed=0
)
trainer.train(2)
print(json.dumps({"forbidden": sorted(m for m in sys.modules if m.startswith("torch._dynamo"))}))
"""
    assert _run(script)["forbidden"] == []
