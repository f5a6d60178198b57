"""Every TOML and shell example of README.md and docs/*.md is run or checked, so a broken
example fails CI.

All examples run in one scratch directory, in this order: the Python examples that make data
files (they contain ``save_snapshot_set(``; the other Python examples are compiled only), then
every TOML block through the spec loader (a fragment without ``name`` completes the smoke
preset), then every shell command:

A TOML block holding a whole spec is also saved as ``<name>.toml`` there (unless a preset has
that name), the file the docs' commands name.

- ``mlasdi-study plan`` runs; ``run`` parses and plans the same spec (a study takes minutes);
  ``budget`` parses and checks its arguments against the spec;
- ``mlasdi fit`` runs, with 2 iterations per stage, on the oscillator or a file; on a generated
  problem (minutes of data) it parses and checks the ``[data]`` table and the architecture;
- ``mlasdi data import`` runs; ``mlasdi data vlasov|burgers1d`` parse and check the solver's
  settings (and the device);
- ``mlasdi-analyze`` and ``python benchmarks/gpu_check.py`` parse their arguments;
- installing and cluster commands (pip, venv, ray, pytest itself) are not ours to run: they are
  listed in NOT_OURS, and any other program fails the test.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from mlasdi.cli import build_parser as mlasdi_parser
from mlasdi.cli import fit_data_table, usable_device
from mlasdi.cli import main as mlasdi_main
from mlasdi.problems import burgers1d, data_source, vlasov
from studies.budget import check_arguments
from studies.cli import build_parser as study_parser
from studies.cli import main as study_main
from studies.spec import PRESET_DIR, PRESETS, SpecError, load_spec, spec_from_dict, tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"bash", "toml", "python", "json", "text"}
# Commands the docs show that set up a machine or a cluster: not run by the tests.
NOT_OURS = {
    ("python", "-m", "venv"),
    ("python", "-m", "pytest"),
    ("python", "-c"),
    ("pip",),
    (".",),
    ("ray",),
}
FIT_RUNS = ("oscillator", "file")  # fit problems cheap enough to run


def fenced_blocks() -> list[tuple[str, str, str]]:
    """``(language, text, "file:line")`` of every fenced block of the docs."""
    found = []
    for path in DOCS:
        lines = path.read_text().split("\n")
        start = None
        for i, line in enumerate(lines):
            if not line.startswith("```"):
                continue
            if start is None:
                start, lang = i, line[3:].strip()
            else:
                where = f"{path.relative_to(ROOT)}:{start + 1}"
                found.append((lang, "\n".join(lines[start + 1 : i]), where))
                start = None
    return found


def _blocks(lang: str) -> list[tuple[str, str]]:
    return [(text, where) for kind, text, where in fenced_blocks() if kind == lang]


def shell_commands() -> list[tuple[list[str], str]]:
    """``(argv, "file:line")`` of every command of the bash blocks (continuations joined,
    comments dropped, ``&&`` and ``;`` chains split)."""
    commands = []
    for text, where in _blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", text)
        for line in joined.split("\n"):
            words = shlex.split(line, comments=True)
            argv: list[str] = []
            for word in [*words, "&&"]:
                if word in ("&&", ";"):
                    if argv:
                        commands.append((argv, where))
                    argv = []
                else:
                    argv.append(word)
    return commands


def _is_ours(argv: list[str]) -> bool:
    return not any(tuple(argv[: len(prefix)]) == prefix for prefix in NOT_OURS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The scratch directory, holding the data files the Python examples write."""
    path = tmp_path_factory.mktemp("docs")
    previous = os.getcwd()
    os.chdir(path)
    try:
        for text, where in _blocks("python"):
            if "save_snapshot_set(" in text:
                exec(compile(text, where, "exec"), {"__name__": "__docs__"})
        for text, _ in _blocks("toml"):  # a whole spec is the file <name>.toml the docs run
            name = tomllib.loads(text).get("name")
            if name and name not in PRESETS:
                Path(f"{name}.toml").write_text(text)
    finally:
        os.chdir(previous)
    return path


def test_every_fenced_block_names_a_known_language():
    blocks = fenced_blocks()
    assert blocks
    assert [where for lang, _, where in blocks if lang not in LANGUAGES] == []


@pytest.mark.parametrize(("text", "where"), _blocks("python"), ids=lambda v: str(v)[:40])
def test_python_examples_compile(text, where):
    compile(text, where, "exec")


@pytest.mark.parametrize(("text", "where"), _blocks("toml"), ids=[w for _, w in _blocks("toml")])
def test_toml_examples_are_valid_specs(text, where, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    raw = tomllib.loads(text)
    if "name" not in raw:  # a fragment: the rest of the smoke preset
        raw = {**tomllib.loads((PRESET_DIR / "smoke.toml").read_text()), **raw}
    spec_from_dict(raw, source=where)


def _study_command(argv: list[str]) -> None:
    parser, _ = study_parser()
    args = parser.parse_args(argv)
    if args.command == "plan":
        assert study_main(argv) == 0
    elif args.command == "run":
        assert study_main(["plan", args.spec] + (["--smoke"] if args.smoke else [])) == 0
    else:
        spec = load_spec(args.spec)
        check_arguments(spec, args.budget, n_trials=args.trials, min_stage=args.min_stage)


def _fit_command(argv: list[str], tmp_path: Path) -> None:
    args = mlasdi_parser().parse_args(argv)
    table = fit_data_table(args)
    if table["problem"] not in FIT_RUNS:
        usable_device(args.device)
        data_source(table)
        return
    out = tmp_path / "fit-out"
    quick = []  # the command with 2 iterations per stage and its --out in tmp_path
    for previous, word in zip(["", *argv], argv, strict=False):
        if "--iters" not in (word, previous):
            quick.append(str(out) if previous == "--out" else word)
    quick += ["--iters", ",".join(["2"] * args.stages), "--quiet", "--no-figures"]
    assert mlasdi_main(quick) == 0
    assert (out / "metrics.json").is_file()


def _mlasdi_command(argv: list[str], tmp_path: Path) -> None:
    if argv[0] == "fit":
        _fit_command(argv, tmp_path)
        return
    args = mlasdi_parser().parse_args(argv)
    if args.problem == "import":
        assert mlasdi_main(argv) == 0
    elif args.problem == "vlasov":  # the solver's settings and the device, without solving
        vlasov.VlasovSettings(nx=args.nx, nv=args.nv, periodic_field=args.periodic_field)
        usable_device(args.device)
    else:
        burgers1d.BurgersSettings(nx=args.nx, nt=args.nt, on_failure=args.on_failure)


def _gpu_check_command(argv: list[str], capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a CUDA machine this would run the whole check")
    benchmarks = str(ROOT / "benchmarks")
    sys.path.insert(0, benchmarks)  # the script imports its sibling benchmarks
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", ROOT / argv[0])
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        os.chdir(ROOT)  # its JSON goes under benchmarks/results/
        assert module.main(argv[1:]) == 2
    finally:
        sys.modules.pop("gpu_check", None)
        sys.path.remove(benchmarks)
    # The arguments parsed and the spec loaded; it stopped only for want of a GPU.
    assert "no CUDA device here" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "where"),
    [c for c in shell_commands() if _is_ours(c[0])],
    ids=[f"{w}:{' '.join(a)[:50]}" for a, w in shell_commands() if _is_ours(a)],
)
def test_shell_examples_run_or_parse(argv, where, workdir, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(workdir)
    program, rest = argv[0], argv[1:]
    if program == "mlasdi-study":
        _study_command(rest)
    elif program == "mlasdi":
        _mlasdi_command(rest, tmp_path)
    elif program == "mlasdi-analyze":
        from analysis.cli import main as analyze_main

        analyze_main(rest)  # parses (argparse exits on bad arguments); the results are absent
    elif program == "python" and rest[:1] == ["benchmarks/gpu_check.py"]:
        _gpu_check_command(rest, capsys)
    else:
        pytest.fail(f"{where}: no check for the command {' '.join(argv)!r}")


def test_the_docs_show_no_command_we_neither_run_nor_list():
    commands = shell_commands()
    assert len([a for a, _ in commands if _is_ours(a)]) >= 20
    for argv, where in commands:
        if not _is_ours(argv):
            assert argv[0] in {p[0] for p in NOT_OURS}, (where, argv)


def test_a_broken_example_fails(workdir, monkeypatch):
    # The checks themselves can fail: a misspelt key in a TOML fragment, a misspelt flag.
    monkeypatch.chdir(workdir)
    fragment = "[mlasdi]\nhidden = [[8]]\nlatent_dim = [3]\nbudgets = [[20, 20]]\n"
    with pytest.raises(SpecError, match="did you mean 'latent_dims'"):
        test_toml_examples_are_valid_specs(fragment, "fragment", workdir, monkeypatch)
    with pytest.raises(SystemExit):
        mlasdi_parser().parse_args(["fit", "--hiden", "3"])
