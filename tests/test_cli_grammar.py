"""One grammar for every subcommand: -o/--output for outputs (old spellings hidden, deprecated), defaults
in --help, a wrong flag answered with the subcommand's own usage, configs by name, the importer list,
--version. Parser-level only: nothing here trains or predicts."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from liverseg import __version__
from liverseg.cli import build_parser, main
from liverseg.cli.grammar import DeprecatedAlias
from liverseg.config import SHIPPED_CONFIGS, load_config, resolve_config, shipped_configs
from liverseg.errors import ConfigError


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) of every subcommand, nested ones (manifest import) included, leaves only."""
    children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not children and path:
        yield path, parser
    for action in children:
        for name, child in action.choices.items():
            yield from _parsers(child, (*path, name))


SUBCOMMANDS = dict(_parsers(build_parser()))
# subcommands that write a file or folder: each takes it as -o/--output
WITH_OUTPUT = {("train",), ("plan",), ("predict",), ("export",), ("evaluate",), ("demo",), ("download",),
               ("manifest", "import")}
# a complete command line for each subcommand (nothing runs: a wrong flag is appended)
VALID = {("train",): ["-o", "run"], ("plan",): ["m.json"], ("predict",): ["ct.nii.gz", "-o", "out"],
         ("models",): [], ("export",): ["run"], ("evaluate",): ["pred"], ("demo",): [], ("inspect",): ["dir"],
         ("check",): ["m.json"], ("manifest", "import"): ["msd", "root", "-o", "m.json"],
         ("download",): ["msd_liver", "-o", "data"]}
OLD_SPELLINGS = {"--out", "--dest", "--outdir", "--output-dir", "--out-dir"}
NAMES_DEFAULT = re.compile(r"\(default\b|\bdefault:", re.IGNORECASE)  # "(default: X)", "(default 1)", "auto (default):"


def _named(path: tuple[str, ...]) -> str:
    return " ".join(path)


def test_every_subcommand_is_covered_here():
    assert set(SUBCOMMANDS) == set(VALID), "a new subcommand: add it to VALID (and WITH_OUTPUT if it writes)"
    assert WITH_OUTPUT <= set(SUBCOMMANDS)


@pytest.mark.parametrize("path", sorted(WITH_OUTPUT), ids=_named)
def test_outputs_are_dash_o_output(path):
    parser = SUBCOMMANDS[path]
    actions = {s: a for a in parser._actions for s in a.option_strings}
    assert "-o" in actions and actions["-o"] is actions["--output"]
    assert actions["-o"].help is not argparse.SUPPRESS


@pytest.mark.parametrize("path", sorted(SUBCOMMANDS), ids=_named)
def test_old_spellings_are_hidden_deprecated_aliases(path):
    parser = SUBCOMMANDS[path]
    text = parser.format_help()
    for old in OLD_SPELLINGS:
        assert not re.search(rf"{re.escape(old)}\b(?![-\w])", text), f"{_named(path)} --help shows {old}"
    for action in parser._actions:
        if set(action.option_strings) & OLD_SPELLINGS:
            assert isinstance(action, DeprecatedAlias) and action.help is argparse.SUPPRESS
            assert action.dest == action.target.dest and action.target.option_strings == ["-o", "--output"]


@pytest.mark.parametrize("argv, expected", [
    (["evaluate", "pred", "--out", "ev"], Path("ev")),
    (["demo", "--out", "d"], Path("d")),
    (["download", "msd_liver", "--dest", "data"], Path("data")),  # -o is required there: --dest satisfies it
    (["download", "msd_liver", "--dest=data"], Path("data")),
], ids=["evaluate--out", "demo--out", "download--dest", "download--dest="])
def test_old_spellings_still_work_with_one_deprecation_line(argv, expected, capsys):
    parser = build_parser()
    args = parser.parse_args(argv)
    assert args.output == expected
    old = next(a for a in argv if a.startswith("--out") or a.startswith("--dest")).split("=")[0]
    assert capsys.readouterr().err == f"liverseg {argv[0]}: {old} is deprecated; use -o/--output\n"
    assert parser.parse_args([argv[0], *argv[1:2], "-o", "new"] if argv[0] != "demo"
                             else ["demo", "-o", "new"]).output == Path("new")
    assert capsys.readouterr().err == ""  # the new spelling: no message


def test_required_output_stays_required_after_an_alias_was_used(capsys):
    parser = build_parser()
    parser.parse_args(["download", "msd_liver", "--dest", "data"])
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["download", "msd_liver"])
    assert info.value.code == 2
    assert "the following arguments are required: -o/--output" in capsys.readouterr().err


def test_train_run_folder_is_dash_o_too():
    parser = build_parser()
    assert parser.parse_args(["train", "-o", "r"]).run_dir == Path("r")
    assert parser.parse_args(["train", "--output", "r"]).run_dir == Path("r")
    assert parser.parse_args(["train", "--run-dir", "r"]).run_dir == Path("r")


def _shows_default(action: argparse.Action) -> bool:
    default = action.default
    return not (default is None or default is False or default is argparse.SUPPRESS or default == []
                or action.help is argparse.SUPPRESS)


@pytest.mark.parametrize("path", sorted(SUBCOMMANDS), ids=_named)
def test_help_shows_every_default(path):
    parser = SUBCOMMANDS[path]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and _shows_default(action):
            assert action.help, f"{_named(path)} {action.option_strings[-1]}: no help, so no default shown"
            assert NAMES_DEFAULT.search(formatter._expand_help(action)), (path, action.option_strings)
    text = parser.format_help()
    for noise in ("default: None", "default: False", "default: []"):
        assert noise not in text


def test_help_prints_a_default(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0
    assert "(default: demo_output)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "(default: onnx)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("path", sorted(VALID), ids=_named)
def test_wrong_flag_prints_the_subcommands_usage(path, capsys):
    with pytest.raises(SystemExit) as info:
        main([*path, *VALID[path], "--no-such-flag"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: liverseg {_named(path)} ")
    assert err.rstrip().endswith(f"liverseg {_named(path)}: error: unrecognized arguments: --no-such-flag")


def test_config_by_name():
    assert resolve_config("demo_3d") == SHIPPED_CONFIGS / "demo_3d.yaml"
    assert resolve_config("demo_3d.yaml") == SHIPPED_CONFIGS / "demo_3d.yaml"
    assert load_config("demo_3d") == load_config(Path(__file__).resolve().parents[1] / "configs" / "demo_3d.yaml")
    args = build_parser().parse_args(["train", "--config", "demo_3d", "-o", "run"])
    assert resolve_config(args.config) == SHIPPED_CONFIGS / "demo_3d.yaml"
    assert {"demo_3d", "smoke_3d", "msd_task03_liver_3d"} <= set(shipped_configs())
    assert "demo_3d" in " ".join(SUBCOMMANDS[("train",)].format_help().split())


def test_config_path_wins_over_name(tmp_path, monkeypatch):
    (tmp_path / "demo_3d.yaml").write_text("train:\n  epochs: 7\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_config("demo_3d.yaml") == Path("demo_3d.yaml")
    assert load_config("demo_3d.yaml").train.epochs == 7
    assert resolve_config("demo_3d") == SHIPPED_CONFIGS / "demo_3d.yaml"  # no file named demo_3d here


def test_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="config file not found") as info:
        resolve_config("demo_4d")
    assert all(name in str(info.value) for name in shipped_configs())
    with pytest.raises(ConfigError, match="shipped: demo_2d"):
        load_config("configs/no_such.yaml")


def test_manifest_import_help_lists_every_importer(capsys, monkeypatch):
    from liverseg.datasets.manifest import IMPORTERS

    monkeypatch.setitem(IMPORTERS, "brand_new_kind", lambda root: {})  # a new importer shows up by itself
    with pytest.raises(SystemExit) as info:
        main(["manifest", "import", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for kind in IMPORTERS:
        assert re.search(rf"\b{kind}\b", out), kind


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"liverseg {__version__}\n"
