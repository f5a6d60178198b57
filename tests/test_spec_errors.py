"""A spec with several errors reports them all in one run, one line each, with the key meant."""

from __future__ import annotations

import pytest

from studies.cli import main
from studies.spec import SpecError, dump_toml, spec_from_dict


def _base() -> dict:
    return {
        "name": "t",
        "seeds": [0],
        "data": {"problem": "oscillator", "nx": 40, "n_t": 21, "grid": [3]},
        "gplasdi": {"hidden": [[12]], "latent_dims": [2], "budgets": [10, 20]},
        "mlasdi": {"hidden": [[8]], "latent_dims": [2], "budgets": [[10, 10], [10, 20]]},
        "training": {"gp": {"n_restarts": 0}},
    }


def _three_typos() -> dict:
    raw = _base()
    raw["mlasdi"]["latnet_dims"] = raw["mlasdi"].pop("latent_dims")  # a misspelt key
    raw["training"]["activation"] = "softpluss"  # a misspelt name
    raw["resources"] = {"cpu": 2}  # a misspelt key in another table
    raw["gplasdi"]["budgets"] = [20, 10]  # a value error beside them
    return raw


def test_every_error_of_a_spec_is_reported_with_the_key_meant():
    with pytest.raises(SpecError) as info:
        spec_from_dict(_three_typos())
    assert info.value.messages == [
        "gplasdi.budgets must be strictly increasing, got [20, 10]",
        "unknown key(s) ['latnet_dims'] in [mlasdi] (did you mean 'latent_dims'?); valid keys: "
        "['budgets', 'hidden', 'latent_dims', 'residual_activation', 'residual_hidden', "
        "'residual_kappa', 'residual_lr', 'sampling']",
        "training.activation must be one of ['softplus', 'tanh', 'relu', 'sigmoid', 'elu', "
        "'gelu', 'silu', 'sin'], got 'softpluss' (did you mean 'softplus'?)",
        "unknown key(s) ['cpu'] in [resources] (did you mean 'cpus'?); valid keys: ['cpus', "
        "'gpus', 'small_gpus', 'small_width']",
    ]


def test_several_unknown_keys_of_one_table_each_get_a_guess():
    raw = _base()
    raw["gplasdi"]["hiden"] = raw["gplasdi"].pop("hidden")
    raw["gplasdi"]["budgest"] = raw["gplasdi"].pop("budgets")
    raw["gplasdi"]["colour"] = 1
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    assert info.value.messages[0].startswith(
        "unknown key(s) ['budgest', 'colour', 'hiden'] in [gplasdi] (did you mean 'budgets' for "
        "'budgest', 'hidden' for 'hiden'?); valid keys:"
    )


def test_misspelt_table_problem_and_preset_names_get_a_guess(capsys):
    raw = _base()
    raw["mlasdl"] = raw.pop("mlasdi")
    raw["data"]["problem"] = "oscilator"
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    text = str(info.value)
    assert "unknown key(s) ['mlasdl'] in [top level] (did you mean 'mlasdi'?)" in text
    assert "got 'oscilator' (did you mean 'oscillator'?)" in text
    assert main(["plan", "vlasov_quik"]) == 2
    assert "(did you mean 'vlasov_quick'?)" in capsys.readouterr().err


def test_the_command_prints_every_error_one_line_each_and_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "typos.toml"
    spec.write_text(dump_toml(_three_typos()))
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4
    assert all(line.startswith(f"mlasdi-study: error: {spec}: ") for line in lines)
    assert sum("did you mean" in line for line in lines) == 3
    assert not out.exists()
