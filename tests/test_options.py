"""The vocabularies as tables, one options object per job, flags generated from it, library wording."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest

import edgeclip
from edgeclip.cli import build_parser, main
from edgeclip.cli.options import add_options, flag_wording, options_from_args
from edgeclip.extras import EXTRAS
from edgeclip.options import LoadOptions, Options, resolve
from edgeclip.tables import (BACKENDS, INT8_RECIPES, PROVIDERS, SCORINGS, SOURCE_KINDS, TOKENIZERS, backend_entries,
                             load_module, markdown, precisions)
from edgeclip.watch import WatchOptions

ROOT = Path(edgeclip.__file__).parent
OPTION_CLASSES = [edgeclip.LoadOptions, edgeclip.ExportOptions, edgeclip.QuantizeOptions, edgeclip.SourceOptions,
                  edgeclip.StreamOptions, edgeclip.StreamOutputs, edgeclip.BatchOptions, edgeclip.EvalOptions,
                  WatchOptions]
#: flags of other programs that messages may quote (a venv, nvidia-smi, curl; the MJPEG part boundary)
OTHER_TOOLS = {"--system-site-packages", "--query-gpu", "--format", "--data-binary", "--frame",
               "--probe"}  # the last: of the RKNN converter script, run in its own Python
#: standalone programs with command lines of their own (run in another Python, they import nothing of edgeclip)
STANDALONE = {"devices/rknn_convert.py"}


def _commands() -> dict[str, argparse.ArgumentParser]:
    return build_parser()._subparsers._group_actions[0].choices


def test_every_row_names_a_module_that_implements_it() -> None:
    for b in BACKENDS.values():
        module = b.load()
        assert callable(module.available) and callable(module.open_encoder), b.name
        assert b.extra in EXTRAS and set(b.precisions) <= set(precisions("file")) | set(precisions("load"))
        assert set(b.int8_recipes) <= set(INT8_RECIPES) and set(b.options) <= set(LoadOptions.names())
        if b.files is not None:
            assert callable(load_module(b.files).find_file)
    for p in PROVIDERS.values():
        assert p.ort_name.endswith("ExecutionProvider") and set(p.int8_recipes) <= set(INT8_RECIPES)
    for k in SOURCE_KINDS.values():
        module = k.load()
        assert callable(module.match) and callable(module.open_reader), k.name
        assert set(k.options) <= set(edgeclip.SourceOptions.names()) and (k.extra is None or k.extra in EXTRAS)
    for t in TOKENIZERS.values():
        assert callable(t.load().from_manifest)
    from edgeclip.quant.recipes import RECIPES
    from edgeclip.runtime import scoring

    assert set(RECIPES) == set(INT8_RECIPES)
    assert all(r.made_for in backend_entries() for r in INT8_RECIPES.values())
    assert all(callable(getattr(scoring, s.function)) for s in SCORINGS.values())


def test_cli_choices_and_profile_checks_derive_from_the_tables() -> None:
    commands = _commands()
    actions = {a.dest: a for a in commands["classify"]._actions}
    assert tuple(actions["backend"].choices) == ("auto", *BACKENDS)
    assert tuple(actions["precision"].choices) == ("auto", *precisions("load"))
    assert tuple(actions["target"].choices) == tuple(INT8_RECIPES)
    assert tuple({a.dest: a for a in commands["quantize"]._actions}["target"].choices) == ("auto", *INT8_RECIPES)
    bench_flags = {s for a in commands["bench"]._actions for s in a.option_strings}
    assert {f"--no-{name}" for name in list(BACKENDS)[1:]} <= bench_flags
    from edgeclip.devices.catalog import load_profiles

    assert all(set(p.backends) <= set(backend_entries()) for p in load_profiles().values())
    assert "| `openvino` |" in markdown() and "| `mjpeg` |" in markdown()


@pytest.mark.parametrize("cls", OPTION_CLASSES, ids=lambda c: c.__name__)
def test_every_option_has_help_and_round_trips_through_its_flags(cls: type[Options]) -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, cls)
    flags = {a.dest for a in parser._actions}
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
        assert (f.name in flags) == f.metadata["cli"], f.name
    assert options_from_args(cls, parser.parse_args([])) == cls()  # the CLI's defaults are the library's


def test_unknown_keywords_name_the_closest_option(tiny_vit_bundle: Path) -> None:
    with pytest.raises(edgeclip.OptionError, match="unknown load option 'precison' \\(did you mean 'precision'\\?\\)"):
        edgeclip.load(tiny_vit_bundle, precison="int8")
    with pytest.raises(edgeclip.OptionError, match="unknown backend 'openvno' \\(did you mean 'openvino'\\?\\)"):
        edgeclip.load(tiny_vit_bundle, backend="openvno")
    with pytest.raises(edgeclip.OptionError, match="did you mean 'time_budget'"):
        edgeclip.quantize(tiny_vit_bundle, time_buget=10)
    with pytest.raises(edgeclip.OptionError, match="did you mean 'fps_limit'"):
        edgeclip.stream(tiny_vit_bundle, "synthetic://64x48", fps_limt=5)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(edgeclip.OptionError) as err:
        edgeclip.QuantizeOptions(images=0, time_budget=0, steps=0, max_drop=200).check()
    message = str(err.value)
    assert all(f"`{name}`" in message for name in ("images", "time_budget", "steps", "max_drop"))


def test_library_messages_name_parameters_and_the_cli_names_flags(tiny_vit_bundle: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(edgeclip.OptionError) as err:
        edgeclip.quantize(tiny_vit_bundle, images=0)
    assert "`images` must be >= 1" in str(err.value) and "--" not in str(err.value)
    assert main(["quantize", str(tiny_vit_bundle), "--images", "0"]) == 2
    assert "--images must be >= 1" in capsys.readouterr().err
    assert flag_wording("drop `dla_core`, or pass precision='int8'; pass overwrite=True") == \
        "drop --dla-core, or pass --precision int8; pass --overwrite"


def test_no_module_outside_the_cli_writes_a_command_line_flag() -> None:
    found = []
    for path in ROOT.rglob("*.py"):
        if path.relative_to(ROOT).parts[0] == "cli" or path.relative_to(ROOT).as_posix() in STANDALONE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
                text = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {m}"
                          for m in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text) if m not in OTHER_TOOLS]
    assert found == []


def test_one_precedence_rule_explicit_then_profile_then_default() -> None:
    profile = {"precision": "int8", "hint": "throughput", "providers": ("cuda", "cpu")}
    got = resolve(LoadOptions(hint="latency"), profile)
    assert (got.precision, got.hint, got.providers, got.threads) == ("int8", "latency", ("cuda", "cpu"), 0)
    assert resolve(LoadOptions(), {}) == LoadOptions()


def test_contradictions_name_what_to_drop() -> None:
    with pytest.raises(edgeclip.OptionError, match="`hint` is read by the openvino backend only"):
        LoadOptions(backend="onnxruntime", hint="latency").check()
    with pytest.raises(edgeclip.OptionError, match="`providers` is read by the onnxruntime backend only.*bf16"):
        LoadOptions(precision="bf16", providers=("cpu",)).check()
    with pytest.raises(edgeclip.OptionError, match="runs the INT8 recipes tensorrt, not 'cpu'"):
        LoadOptions(backend="tensorrt", target="cpu").check()
    LoadOptions(backend="openvino", hint="latency", cache_dir="/tmp/x").check()


def test_public_names_that_share_a_subpackage_name_stay_callable() -> None:
    import edgeclip.export.options  # noqa: F401  (the subpackage imported first)
    import edgeclip.stream.loop  # noqa: F401

    assert edgeclip.export.__module__ == "edgeclip.api" and callable(edgeclip.stream)
    from edgeclip import export, stream

    assert export is edgeclip.export and stream is edgeclip.stream


def test_the_docs_show_the_tables_as_they_are() -> None:
    text = (ROOT.parent / "docs" / "api.md").read_text(encoding="utf-8")
    begin, end = "<!-- tables: begin -->\n", "<!-- tables: end -->"
    assert text[text.index(begin) + len(begin):text.index(end)] == markdown(), \
        "docs/api.md is out of date: paste the output of `python -m edgeclip.tables` between its table markers"
