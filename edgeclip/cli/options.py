"""Flags generated from the options objects, and helpers shared by the CLI's command modules.

Every field of a job's options dataclass (``edgeclip.options.option``) becomes ``--field-name``: its help
(with the default added), choices and metavar come from the field; a bool is a switch (``--name``, or
``--no-name`` where it defaults to True); a field with ``parse`` converts the text. ``options_from_args``
builds the object back from the parsed arguments, so the library's defaults are the CLI's.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import sys
import typing
from typing import Any, Iterable, TypeVar

from ..errors import EdgeclipError
from ..options import Options

O = TypeVar("O", bound=Options)

_NO_DEFAULT_SHOWN = (None, "", 0, 0.0, False)


def flag(name: str) -> str:
    """``max_part_size`` -> ``--max-part-size``."""
    return "--" + name.replace("_", "-")


def parser_type(parse: Any) -> Any:
    """An argparse ``type`` from a library parser: its EdgeclipError becomes argparse's usage error."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except (EdgeclipError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The options class's evaluated annotations (once per class: evaluating them is most of building the parser)."""
    return typing.get_type_hints(cls)


def _kind(cls: type, f: dataclasses.Field) -> tuple[type, bool]:
    """The field's base type (int, float, str or bool; ``X | None`` -> X) and whether it is a tuple of them."""
    hint = _hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is not tuple else []
    base = args[0] if args else hint
    if typing.get_origin(base) is tuple and not f.metadata["parse"]:
        return typing.get_args(base)[0], True
    return (base if base in (int, float, str, bool) else str), False


def _shown(value: Any) -> Any:
    """A default as the help shows it (tuples comma-separated, floats short)."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else value


def _help(f: dataclasses.Field, default: Any, negated: bool = False) -> str:
    text = ("do not " if negated else "") + f.metadata["help"]
    text = re.sub(r"`([a-z_]+)`", lambda m: flag(m.group(1)), text)  # other options in flag words
    if default not in _NO_DEFAULT_SHOWN and "(default" not in text:
        text += f" (default {default})"
    return text.replace("%", "%%").replace("%%%%", "%%")


def add_options(parser: argparse.ArgumentParser, cls: type[Options], fields: Iterable[str] | None = None,
                groups: dict[str | None, str] | None = None, defaults: dict[str, Any] | None = None) -> None:
    """Add ``--flag`` for each field of ``cls`` (``fields``: only these, in this order), in argument groups
    named by the fields' ``group`` (``groups`` renames them; a field without a group goes on ``parser``).
    ``defaults`` replaces a field's default for this command (shown in its help)."""
    wanted = list(fields) if fields is not None else None
    by_name = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)}
    made: dict[str, Any] = {}
    for name in wanted if wanted is not None else list(by_name):
        f = by_name[name]
        title = (groups or {}).get(f.metadata["group"], f.metadata["group"])
        if title is None:
            target: Any = parser
        else:
            if title not in made:
                made[title] = next((g for g in parser._action_groups if g.title == title), None) \
                    or parser.add_argument_group(title)
            target = made[title]
        default = (defaults or {}).get(name, f.default)
        (kind, many), meta = _kind(cls, f), f.metadata
        if kind is bool:
            target.add_argument(flag(name) if not default else "--no-" + name.replace("_", "-"), dest=name,
                                action="store_false" if default else "store_true", default=default,
                                help=_help(f, False, negated=bool(default)))
            continue
        convert = parser_type(meta["parse"]) if meta["parse"] else kind
        shown = _shown(default) if meta["parse"] is None or isinstance(default, (str, int, float, tuple)) \
            else str(default)
        alias = meta["alias"]
        names = (flag(name), ("-" if len(alias) == 1 else "--") + alias) if alias else (flag(name),)
        target.add_argument(*names, dest=name, type=convert, default=default, choices=meta["choices"],
                            metavar=meta["metavar"], help=_help(f, shown), **({"nargs": "+"} if many else {}))


def options_from_args(cls: type[O], args: argparse.Namespace, fields: Iterable[str] | None = None,
                      **extra: Any) -> O:
    """The options object of ``cls`` from the parsed flags (``fields``: only these, as given to
    :func:`add_options`; fields without a flag keep their default), with ``extra`` values on top; checked,
    every problem named."""
    names = set(fields) if fields is not None else {f.name for f in dataclasses.fields(cls)}
    values = {f.name: tuple(v) if isinstance(v, list) else v for f in dataclasses.fields(cls)
              if f.name in names and hasattr(args, f.name) for v in [getattr(args, f.name)]}
    return cls.build(**{**values, **extra})


def progress_bar(args: argparse.Namespace, total: int, desc: str, unit: str = "img") -> Any:
    """A tqdm progress bar on stderr, silent with --quiet."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=bool(getattr(args, "quiet", False)), file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


def say(args: argparse.Namespace, prefix: str) -> Any:
    """A function printing ``[prefix] message`` on stderr, or nothing with --quiet."""
    if getattr(args, "quiet", False):
        return lambda message: None
    return lambda message: print(f"[{prefix}] {message}", file=sys.stderr)


def flag_wording(message: str) -> str:
    """A library message in command-line terms: `name` -> --name, name='value' -> --name value,
    name=True -> --name."""
    message = re.sub(r"`([a-z_]+)`", lambda m: flag(m.group(1)), message)
    message = re.sub(r"\b([a-z_]+)=True\b", lambda m: flag(m.group(1)), message)
    return re.sub(r"\b([a-z_]+)='([^']*)'", lambda m: f"{flag(m.group(1))} {m.group(2)}", message)


def add_load_options(p: argparse.ArgumentParser) -> None:
    """--device, --precision, --target, --backend, --providers, --threads, --hint, --cache-dir: how the image
    encoder runs (``edgeclip.LoadOptions``)."""
    from ..options import LoadOptions

    add_options(p, LoadOptions, groups={None: "device and backend (see `edgeclip devices`)"})


def load_options(args: argparse.Namespace, **extra: Any) -> Any:
    """``edgeclip.LoadOptions`` from the flags of :func:`add_load_options`."""
    from ..options import LoadOptions

    return options_from_args(LoadOptions, args, **extra)


def add_label_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--labels / --labels-file and --templates."""
    g = p.add_argument_group("labels")
    g.add_argument("--labels", nargs="+", metavar="NAME",
                   help="label names (a single argument with commas is split: 'cat,dog,bird')")
    g.add_argument("--labels-file", metavar="FILE",
                   help="labels file: .txt (one per line), .csv (name[,synonyms][,descriptions]) or .json")
    g.add_argument("--templates", default=None, metavar="SET|FILE",
                   help="prompt templates: short (default), imagenet80, photo, none, or a file with one per line")
    p.set_defaults(_labels_required=required)


def label_names(args: argparse.Namespace) -> list[str] | None:
    """The --labels names (one argument with commas is split), or None."""
    if not args.labels:
        return None
    return [n.strip() for a in args.labels for n in (a.split(",") if len(args.labels) == 1 else [a]) if n.strip()]
