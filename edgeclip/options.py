"""One options object per job, and one rule of precedence.

A job's options are a frozen dataclass whose fields hold the defaults once, with their help text and
choices in the field metadata (:func:`option`); the CLI builds its flags from those fields
(``edgeclip.cli.options.add_options``) and the library passes the object down unchanged. Keyword
arguments become an options object through :meth:`Options.build`, which answers an unknown name with the
closest valid one; :meth:`Options.check` collects every problem before any work starts. :func:`resolve`
is the one precedence rule: an explicit value, else the device profile's, else the field's default
(open_clip's ``merge_preprocess_kwargs`` in spirit).

:class:`LoadOptions` are ``edgeclip.load``'s: how the image encoder runs on a device. Other jobs keep their
options beside them (``QuantizeOptions`` in ``edgeclip.quant.options``, ``SourceOptions`` in
``edgeclip.sources``, ``StreamOptions``, ``ServeOptions``), built with the same pieces.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

from .errors import OptionError
from .tables import BACKENDS, INT8_RECIPES, OPENVINO_HINTS, PROVIDERS, RKNN_CORE_MASKS, closest, precisions

O = TypeVar("O", bound="Options")


def option(default: Any, help: str, *, choices: Sequence[str] | None = None, metavar: str | None = None,
           parse: Callable[[str], Any] | None = None, group: str | None = None, alias: str | None = None,
           output: str | None = None, cli: bool = True) -> Any:
    """A dataclass field with its CLI description: ``help`` (the default is added), ``choices``, ``metavar``,
    ``parse`` (text -> value, for the CLI), ``group`` (the help section it belongs to), ``alias`` (a second
    name for the flag: one letter is a short flag, ``o`` for ``-o``; a word a long one), ``output``
    (``"file"`` or ``"folder"``: a path the job writes, checked with :func:`check_output` before any work),
    ``cli=False`` (no flag). The CLI's flag is the field name with dashes."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "metavar": metavar,
            "parse": parse, "group": group, "alias": alias, "output": output, "cli": cli}
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return field(default=default, metadata=meta)


def parse_size(text: str | int) -> int:
    """A byte count such as ``268435456``, ``512M``, ``512MB``, ``2G`` or ``64k`` (powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)i?b?\s*", str(text), re.IGNORECASE)
        value = int(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " ") if m else 0
    if value < 1:
        raise OptionError(f"expected a positive size such as 268435456, 512M or 2G, got {text!r}")
    return value


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string with a unit (``250ms``, ``5s``, ``2m``, ``1h``); >= 0."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s, 500ms or 2m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", str(value).lower())
        if not m:
            raise ValueError(f"{value!r} is not a duration; write 5s, 500ms, 2m or a number of seconds")
        seconds = float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"a duration must be >= 0, got {value!r}")
    return seconds


def positive_int(text: str | int) -> int:
    """A whole number >= 1; thousands separators (``1,000,000``, ``1_000_000``) allowed."""
    try:
        value = int(str(text).replace(",", "").replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise OptionError(f"expected a positive whole number, got {text!r}")
    return value


def check_output(path: str | os.PathLike[str], param: str, kind: str = "file") -> str | None:
    """What stops a job from writing ``path`` (a ``file``, or a ``folder`` it creates or fills), naming
    ``param`` and the fix; None when nothing does. ``-`` (standard output) is always fine.

    One rule for every output: the folder it goes in must exist (nothing creates missing parents), a file
    output must not be an existing folder and a folder output not an existing file, and the place must be
    writable (a file is created and removed there to know).
    """
    text = os.fspath(path)
    if text == "-":
        return None
    target = Path(text).expanduser()
    parent = target.parent
    if kind == "file" and target.is_dir():
        return f"`{param}` {text} is a folder; give a file name in it (e.g. {target / 'out'})"
    if kind == "folder" and target.exists() and not target.is_dir():
        return f"`{param}` {text} is a file; give a folder"
    if not parent.is_dir():
        return f"`{param}` {text}: the folder {parent} does not exist; create it first (mkdir -p {parent})"
    where = target if target.is_dir() else parent
    if target.is_file():
        return None if os.access(target, os.W_OK) else f"`{param}` {text}: the file is not writable"
    try:
        with tempfile.NamedTemporaryFile(dir=where, prefix=".edgeclip-probe-"):
            pass
    except OSError as exc:
        return f"`{param}` {text}: cannot write in {where} ({exc.strerror or exc}); choose another place"
    return None


def comma_list(text: str) -> tuple[str, ...]:
    """``"tensorrt,cuda,cpu"`` -> ``("tensorrt", "cuda", "cpu")``."""
    return tuple(p.strip() for p in str(text).split(",") if p.strip())


@dataclass(frozen=True)
class Options:
    """Base of the options dataclasses: building from keywords, checking, replacing."""

    #: what the options are for, in error messages ("load option")
    WHAT: ClassVar[str] = "option"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in field order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def build(cls: type[O], base: O | None = None, /, **values: Any) -> O:
        """``base`` (or the defaults) with ``values`` replaced; OptionError naming an unknown key and the
        closest valid one. The result is checked (:meth:`check`)."""
        unknown = [k for k in values if k not in cls.names()]
        if unknown:
            raise OptionError("; ".join(f"unknown {cls.WHAT} {k!r}{closest(k, cls.names())}" for k in unknown)
                              + f"; the {cls.WHAT}s are {', '.join(cls.names())}")
        out = dataclasses.replace(base, **values) if base is not None else cls(**values)
        out.check()
        return out

    def replace(self: O, **values: Any) -> O:
        """A checked copy with some values replaced."""
        return type(self).build(self, **values)

    def problems(self) -> list[str]:
        """Everything wrong with these options (each naming the parameter and the fix); [] when none."""
        return []

    def output_problems(self) -> list[str]:
        """What stops the job from writing the outputs these options name (fields with ``output=``)."""
        return [problem for f in dataclasses.fields(self) if f.metadata.get("output") and getattr(self, f.name)
                for problem in [check_output(getattr(self, f.name), f.name, f.metadata["output"])] if problem]

    def choice_problems(self) -> dict[str, str]:
        """Field -> problem, for fields declared with ``choices`` whose value is not one of them (None is accepted
        where it is the default)."""
        out = {}
        for f in dataclasses.fields(self):
            allowed, value = f.metadata.get("choices"), getattr(self, f.name)
            if allowed and value not in allowed and not (value is None and f.default is None):
                out[f.name] = f"unknown {f.name} {value!r}{closest(str(value), allowed)}; use one of {', '.join(allowed)}"
        return out

    def check(self) -> None:
        """Raise one OptionError listing every problem before any work: the outputs' first; else
        :meth:`problems` and every value outside a field's ``choices`` that :meth:`problems` did not word itself."""
        found = self.output_problems()
        if not found:
            found = self.problems()
            said = " ".join(found)
            found += [p for name, p in self.choice_problems().items() if name not in said]
        if found:
            raise OptionError("; ".join(found))

    def given(self) -> frozenset[str]:
        """The fields set to something other than their default."""
        return frozenset(f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def resolve(explicit: O, *layers: Mapping[str, Any]) -> O:
    """The one precedence rule: each field keeps its explicit value (one that is not the field's default);
    a field left at its default takes the first layer that has a value for it (a device profile's
    defaults: :meth:`edgeclip.devices.catalog.DeviceProfile.load_defaults`), else keeps the default."""
    given = explicit.given()
    values = {}
    for name in explicit.names():
        if name in given:
            continue
        for layer in layers:
            if layer.get(name) is not None:
                values[name] = layer[name]
                break
    return dataclasses.replace(explicit, **values)


def _threads(text: str) -> int:
    return int(text)


@dataclass(frozen=True)
class LoadOptions(Options):
    """How ``edgeclip.load`` runs a bundle's image encoder on this device (``edgeclip devices`` lists the
    profiles). ``auto``/None values are the device profile's; explicit ones override it."""

    WHAT: ClassVar[str] = "load option"

    device: str = option("auto", "device profile (default auto: detect this machine); it picks the INT8 recipe "
                                 "and the backend order", metavar="PROFILE")
    precision: str = option("auto", "image encoder precision (default auto: the device profile's, INT8 where the "
                                    "bundle has a file its backend runs; bf16: OpenVINO on CPUs with "
                                    "AVX512_BF16/AMX)", choices=("auto", *precisions("load")))
    target: str | None = option(None, "INT8 recipe to use (default: the one made for the chosen backend)",
                                choices=tuple(INT8_RECIPES))
    backend: str = option("auto", "inference backend (default auto: the profile's order; tensorrt needs "
                                  "`edgeclip build`; openvino needs the openvino extra)",
                          choices=("auto", *BACKENDS))
    providers: tuple[str, ...] | None = option(
        None, "ONNX Runtime providers in fallback order, comma-separated: tensorrt,cuda,cpu (default: the "
              "profile's)", parse=comma_list)
    threads: int = option(0, "intra-op threads (0 = all cores)", parse=_threads)
    hint: str | None = option(None, "OpenVINO performance hint (default: the profile's): latency runs a batch as "
                                    "one request on every core, throughput splits it over parallel streams, "
                                    "auto: latency for one image, throughput for batches",
                              choices=OPENVINO_HINTS)
    cache_dir: str | None = option(None, "OpenVINO compiled-model cache (default $XDG_CACHE_HOME/edgeclip/"
                                         "openvino or ~/.cache/edgeclip/openvino)", metavar="DIR")
    core_mask: str | None = option(None, "Rockchip NPU cores (rknn): auto lets the runtime pick an idle core; 0, 1, 2; "
                                         "0_1, 0_1_2 spread one inference; all (default: the profile's)",
                                   choices=RKNN_CORE_MASKS)
    top_k: int = option(5, "labels per prediction", cli=False)

    def __post_init__(self) -> None:
        if self.providers is not None and not isinstance(self.providers, tuple):  # a list or one string given
            names = comma_list(self.providers) if isinstance(self.providers, str) else tuple(self.providers)
            object.__setattr__(self, "providers", names)
        if self.cache_dir is not None and not isinstance(self.cache_dir, str):
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))

    def problems(self) -> list[str]:
        """Unknown values and contradictions, each naming the argument to drop or change."""
        out = []
        for name, allowed in (("precision", ("auto", *precisions("load"))), ("backend", ("auto", *BACKENDS)),
                              ("target", (None, *INT8_RECIPES)), ("hint", (None, *OPENVINO_HINTS)),
                              ("core_mask", (None, *RKNN_CORE_MASKS))):
            value = getattr(self, name)
            if value not in allowed:
                shown = [a for a in allowed if a is not None]
                out.append(f"unknown {name} {value!r}{closest(value, shown)}; use one of {', '.join(shown)}")
        for p in self.providers or ():
            if p.lower() not in PROVIDERS and not p.endswith("ExecutionProvider"):
                out.append(f"unknown execution provider {p!r}{closest(p.lower(), PROVIDERS)}; use one of "
                           f"{', '.join(PROVIDERS)}")
        if self.threads < 0:
            out.append(f"`threads` must be >= 0 (0 = all cores), got {self.threads}")
        if self.top_k < 1:
            out.append(f"`top_k` must be >= 1, got {self.top_k}")
        return out or self._contradictions()

    def backends(self) -> tuple[str, ...]:
        """The backends these options allow: the one named, else those that run the precision asked for."""
        if self.backend != "auto":
            return (self.backend,)
        return tuple(b.name for b in BACKENDS.values() if self.precision == "auto" or self.precision in b.precisions)

    def _contradictions(self) -> list[str]:
        out = []
        if self.target is not None and self.precision not in ("auto", "int8"):
            out.append(f"`target` picks an INT8 recipe but precision is {self.precision}: drop `target`, or pass "
                       f"precision='int8'")
        allowed = self.backends()
        if not allowed:
            out.append(f"no backend runs precision={self.precision!r}")
        elif self.precision != "auto" and self.backend != "auto" and self.precision not in BACKENDS[self.backend].precisions:
            runs = [b.name for b in BACKENDS.values() if self.precision in b.precisions]
            out.append(f"precision='{self.precision}' runs on {' or '.join(runs)} only, not {self.backend}: pass "
                       f"backend='{runs[0]}', or precision='fp32'")
        for b in BACKENDS.values():  # options only another backend reads
            own = [name for name in b.options if getattr(self, name) is not None]
            if own and b.name not in allowed:
                why = f"the backend is {self.backend}" if self.backend != "auto" else \
                    f"precision='{self.precision}' runs on {' or '.join(allowed)}"
                out += [f"`{name}` is read by the {b.name} backend only but {why}: drop `{name}`, or pass "
                        f"backend='{b.name}'" for name in own]
        if self.target is not None and len(allowed) == 1:
            recipes = BACKENDS[allowed[0]].int8_recipes
            if recipes and self.target not in recipes:
                out.append(f"the {allowed[0]} backend runs the INT8 recipes {', '.join(recipes)}, not "
                           f"{self.target!r}: drop `target`")
        return out

    def precision_given(self) -> bool:
        """Whether the precision was asked for explicitly (then a missing file is an error, not a fallback)."""
        return self.precision != "auto"
