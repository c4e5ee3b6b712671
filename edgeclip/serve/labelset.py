"""The service's label set: parsing ``PUT /v1/labels`` documents and swapping label sets atomically.

A :class:`LabelSet` is immutable (names, full labels, templates, the [N, D] matrix, a version number);
the service holds one and replaces the reference in one assignment, so a batch that took the old set
finishes on it while the next batch sees the new one. Documents are validated like ``edgeclip labels``
(``check_labels``, ``check_template``), with limits that keep one request from occupying the text encoder
for long; template sets are named (``short``, ``imagenet80``, ...) or given as a list, never as a file
path (a request must not read the server's files).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..bundle import LABELS_JSON, Bundle
from ..errors import EdgeclipError, LabelsError
from ..runtime.labels import TEMPLATE_SETS, Label, check_labels, check_template, check_text, prompt_count
from ..runtime.text import bundle_templates

#: Limits on one label document.
MAX_LABELS = 2000
MAX_TEMPLATES = 100
MAX_TEXT = 300  # characters per name, synonym, description or template
MAX_PROMPTS = 50_000  # labels x (1 + synonyms) x templates + descriptions

_LABEL_KEYS = ("name", "synonyms", "descriptions")


@dataclass(frozen=True)
class LabelSet:
    """One label set in use: what ``GET /v1/labels`` shows and what a batch classifies against."""

    labels: tuple[Label, ...]
    template_set: str
    templates: tuple[str, ...]
    matrix: np.ndarray = field(repr=False)
    version: int = 1

    @property
    def names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    def to_json(self) -> dict[str, Any]:
        """``{"labels": [{"name", "synonyms"?, "descriptions"?}], "names", "count", "template_set", ...}``."""
        return {"labels": [{"name": lab.name, **lab.to_json()} for lab in self.labels], "names": self.names,
                "count": len(self.labels), "template_set": self.template_set, "templates": list(self.templates),
                "version": self.version}


@dataclass
class LabelRequest:
    """A validated ``PUT /v1/labels`` document: labels and, when given, templates (else keep the current)."""

    labels: list[Label]
    template_set: str | None = None
    templates: list[str] | None = None


def _text(value: Any, where: str) -> str:
    value = check_text(value, where).strip()
    if len(value) > MAX_TEXT:
        raise LabelsError(f"{where} is {len(value)} characters long; the limit is {MAX_TEXT}")
    return value


def _texts(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise LabelsError(f"{where} must be a string or a list of strings, got {type(value).__name__}")
    return [t for i, v in enumerate(value) if (t := _text(v, f"{where}[{i}]"))]


def parse_label(obj: Any, where: str) -> Label:
    """A label from a string or ``{"name", "synonyms", "descriptions"}`` (other keys are an error)."""
    if isinstance(obj, str):
        return Label(_text(obj, where))
    if not isinstance(obj, dict):
        raise LabelsError(f"{where} must be a string or an object with a 'name', got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_LABEL_KEYS))
    if unknown:
        raise LabelsError(f"{where} has unknown keys {unknown}; a label has {', '.join(_LABEL_KEYS)}")
    if "name" not in obj:
        raise LabelsError(f"{where} has no 'name'")
    return Label(_text(obj["name"], f"{where}.name"), _texts(obj.get("synonyms", []), f"{where}.synonyms"),
                 _texts(obj.get("descriptions", []), f"{where}.descriptions"))


def parse_templates(value: Any) -> tuple[str, list[str]]:
    """(template set name, templates) from a set name or a list of templates with one ``{}`` each."""
    if isinstance(value, str):
        if value not in TEMPLATE_SETS:
            raise LabelsError(f"templates: unknown template set {value!r}; use one of "
                              f"{', '.join(TEMPLATE_SETS)} or a list of templates containing {{}}")
        return value, list(TEMPLATE_SETS[value])
    if not isinstance(value, list) or not value:
        raise LabelsError("templates must be a template set name or a non-empty list of templates containing {}")
    if len(value) > MAX_TEMPLATES:
        raise LabelsError(f"templates: {len(value)} given; the limit is {MAX_TEMPLATES}")
    templates = [check_template(_text(t, f"templates[{i}]"), f"templates[{i}]") for i, t in enumerate(value)]
    return "custom", templates


def parse_label_document(doc: Any, templates_in_use: int = 1, max_prompts: int = MAX_PROMPTS) -> LabelRequest:
    """Validate a decoded ``PUT /v1/labels`` document: ``{"labels": [...], "templates": ...}`` or a bare list.

    The work it asks for is sized first, from the document alone: the prompts its labels would make
    (:func:`raw_prompt_count`, with ``templates_in_use`` templates unless it names its own) over
    ``max_prompts`` is a LabelsError before any label or prompt is built.
    """
    if isinstance(doc, list):
        doc = {"labels": doc}
    if not isinstance(doc, dict):
        raise LabelsError('the request body must be a JSON object {"labels": [...]} or a list of labels')
    unknown = sorted(set(doc) - {"labels", "templates"})
    if unknown:
        raise LabelsError(f"unknown keys {unknown}; the document has 'labels' and optionally 'templates'")
    items = doc.get("labels")
    if not isinstance(items, list):
        raise LabelsError("'labels' must be a list of names or of {\"name\", \"synonyms\", \"descriptions\"} objects")
    if len(items) > MAX_LABELS:
        raise LabelsError(f"{len(items)} labels given; the limit is {MAX_LABELS}")
    given = doc.get("templates")
    if isinstance(given, list) and len(given) > MAX_TEMPLATES:
        raise LabelsError(f"templates: {len(given)} given; the limit is {MAX_TEMPLATES}")
    if isinstance(given, list):
        n_templates = len(given)
    elif isinstance(given, str):
        n_templates = len(TEMPLATE_SETS.get(given, ())) or 1  # an unknown set name is refused below
    else:
        n_templates = templates_in_use
    _check_count(raw_prompt_count(items, n_templates), max_prompts)
    labels = check_labels([parse_label(o, f"labels[{i}]") for i, o in enumerate(items)], "labels")
    request = LabelRequest(labels)
    if given is not None:
        request.template_set, request.templates = parse_templates(given)
    return request


def raw_prompt_count(items: Sequence[Any], templates: int) -> int:
    """The prompts a document's label items would make with ``templates`` templates, counted from the
    decoded JSON without building anything (an upper bound: blank strings are dropped later)."""
    def size(value: Any) -> int:
        return 1 if isinstance(value, str) else len(value) if isinstance(value, list) else 0

    total = 0
    for obj in items:
        if isinstance(obj, dict):
            total += (1 + size(obj.get("synonyms", []))) * templates + size(obj.get("descriptions", []))
        else:
            total += templates
    return total


def _check_count(n: int, max_prompts: int) -> int:
    if n > max_prompts:
        raise LabelsError(f"{n:,} prompts (labels x (1 + synonyms) x templates + descriptions) exceed the limit "
                          f"of {max_prompts:,}; use fewer templates or synonyms (or raise `max_prompts`)")
    return n


def check_prompt_count(labels: Sequence[Label], templates: Sequence[str], max_prompts: int = MAX_PROMPTS) -> int:
    """The number of prompts the text encoder will run (counted, not built); over ``max_prompts`` is a
    LabelsError."""
    return _check_count(prompt_count(labels, len(templates)), max_prompts)


def initial_label_set(bundle: Bundle, names: Sequence[str], matrix: np.ndarray) -> LabelSet:
    """The label set a classifier starts with: synonyms and descriptions from the bundle's ``labels.json``
    when its names match the classifier's, else the bare names."""
    template_set, templates = bundle_templates(bundle)
    labels = [Label(n) for n in names]
    try:
        doc = json.loads(bundle.file(LABELS_JSON).read_text(encoding="utf-8"))
        parsed = [parse_label(o, "labels.json") for o in doc.get("labels", [])]
        if [lab.name for lab in parsed] == list(names):
            labels = parsed
    except (EdgeclipError, OSError, ValueError, AttributeError):
        pass
    return LabelSet(tuple(labels), template_set, tuple(templates), np.asarray(matrix, dtype=np.float32))
