"""Label sets: parsing label files, prompt templates and CLIP prompt ensembling (torch-free)."""
from __future__ import annotations

import csv
import io
import json
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import LabelsError

#: The 80 prompt templates CLIP used for ImageNet zero-shot classification.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

#: The short ensemble (CLIP's 7 best ImageNet templates, plus the plain photo prompt).
SHORT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "imagenet80": IMAGENET_TEMPLATES,
    "short": SHORT_TEMPLATES,
    "photo": ("a photo of a {}.",),
    "none": ("{}",),
}
DEFAULT_TEMPLATES = "short"


@dataclass
class Label:
    """One class: its name, optional synonyms (more names) and descriptions (CuPL-style sentences)."""

    name: str
    synonyms: list[str] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}


def _split_multi(value: str | None) -> list[str]:
    if not value:
        return []
    sep = "|" if "|" in value else ";"
    return [v.strip() for v in value.split(sep) if v.strip()]


def _label_from_obj(obj: object, where: str) -> Label:
    if isinstance(obj, str):
        return Label(obj.strip())
    if isinstance(obj, dict) and isinstance(obj.get("name"), str):
        def strings(key: str) -> list[str]:
            v = obj.get(key, [])
            v = [v] if isinstance(v, str) else v
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise LabelsError(f"{where}: {key!r} of label {obj['name']!r} must be a string or a list of strings")
            return [s.strip() for s in v if s.strip()]
        return Label(obj["name"].strip(), strings("synonyms"), strings("descriptions"))
    raise LabelsError(f"{where}: each label must be a string or an object with a 'name' (got {obj!r})")


def read_labels_file(path: str | Path) -> list[Label]:
    """Read labels from ``.txt`` (one per line, ``#`` comments), ``.csv``, ``.tsv`` or ``.json``.

    CSV (and TSV with a header): a header with ``name`` and optional ``synonyms`` / ``descriptions`` columns
    (several values separated by ``|`` or ``;``). A TSV without a ``name`` header is a class map
    (``folder<TAB>name`` per line, as ``edgeclip eval`` reads, e.g. ``imagenette-classes.tsv``): its names are
    the labels. JSON: a list of names or of objects ``{"name", "synonyms", "descriptions"}``,
    or an object mapping names to such objects (or to a list of descriptions).
    """
    p = Path(path)
    if not p.is_file():
        raise LabelsError(f"{p}: labels file not found")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelsError(f"{p}: not UTF-8 text ({exc}); save the labels file as UTF-8") from exc
    suffix = p.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LabelsError(f"{p}: invalid JSON ({exc})") from exc
        except RecursionError:
            raise LabelsError(f"{p}: JSON nested too deeply; a labels file is a list of names or of "
                              f"{{\"name\", \"synonyms\", \"descriptions\"}} objects") from None
        if isinstance(data, dict) and "labels" in data and isinstance(data["labels"], list):
            data = data["labels"]  # a bundle's own labels.json
        if isinstance(data, dict):
            items = []
            for name, v in data.items():
                if isinstance(v, list):
                    v = {"descriptions": v}
                if not isinstance(v, dict):
                    raise LabelsError(f"{p}: value for {name!r} must be an object or a list of descriptions")
                items.append({"name": name, **v})
            data = items
        if not isinstance(data, list):
            raise LabelsError(f"{p}: expected a JSON list of labels or an object keyed by label name")
        labels = [_label_from_obj(o, str(p)) for o in data]
    elif suffix == ".tsv" and "name" not in (text.splitlines() or [""])[0].split("\t"):
        labels = _read_class_map(text)
    elif suffix in (".csv", ".tsv"):
        labels = _read_csv(text, "\t" if suffix == ".tsv" else ",", str(p))
    else:
        labels = [Label(line.strip()) for line in text.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    return check_labels(labels, str(p))


def _read_class_map(text: str) -> list[Label]:
    """Labels from a class map: the last column of each tab-separated line (``#`` comments)."""
    rows = [line.split("\t") for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [Label(" ".join(row[-1].split())) for row in rows]


def _read_csv(text: str, delimiter: str, where: str) -> list[Label]:
    """Labels from CSV text parsed as CSV (a quoted field may span lines; bad quoting is an error)."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise LabelsError(f"{where}: not valid CSV at line {reader.line_num} ({exc}); quote fields that hold "
                          f"the delimiter, quotes or line breaks, and close every quote") from None
    if not rows or "name" not in (reader.fieldnames or []):
        raise LabelsError(f"{where}: a CSV labels file needs a header row with a 'name' column "
                          f"(optional: synonyms, descriptions)")
    # A name spanning lines (a quoted field) is one label; its line breaks become spaces.
    return [Label(" ".join(r["name"].split()), _split_multi(r.get("synonyms")), _split_multi(r.get("descriptions")))
            for r in rows if (r.get("name") or "").strip()]


def check_text(value: object, where: str) -> str:
    """``value`` if it is a string of valid text; a LabelsError for other types and for lone surrogates
    (``"\\ud800"`` from a JSON escape or Python), which no UTF-8 file, tokenizer or JSON answer can hold."""
    if not isinstance(value, str):
        raise LabelsError(f"{where}: must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LabelsError(f"{where}: {value[:40]!r} is not valid text (a lone surrogate "
                          f"{value[exc.start]!r} at position {exc.start}); use valid Unicode text") from None
    return value


def check_labels(labels: Sequence[Label], where: str = "labels") -> list[Label]:
    """Reject empty label sets, empty names, duplicates and strings that are not valid text."""
    labels = list(labels)
    if not labels:
        raise LabelsError(f"{where}: no labels given")
    seen: set[str] = set()
    for i, lab in enumerate(labels):
        if not isinstance(lab, Label):
            raise LabelsError(f"{where}[{i}]: expected a Label or a name, got {type(lab).__name__}")
        check_text(lab.name, f"{where}[{i}].name")
        for key in ("synonyms", "descriptions"):
            values = getattr(lab, key)
            if not isinstance(values, (list, tuple)):
                raise LabelsError(f"{where}[{i}].{key}: must be a list of strings, got {type(values).__name__}")
            for j, v in enumerate(values):
                check_text(v, f"{where}[{i}].{key}[{j}]")
        if not lab.name:
            raise LabelsError(f"{where}: a label has an empty name")
        if lab.name in seen:
            raise LabelsError(f"{where}: label {lab.name!r} appears twice; labels must be unique")
        seen.add(lab.name)
    return labels


#: The placeholders a template may use for the label: ``{}`` or ``{label}`` (other braces doubled: ``{{``).
PLACEHOLDERS = ("", "label")


def check_template(template: str, where: str = "template") -> str:
    """A template with exactly one placeholder, ``{}`` or ``{label}``; anything else is a LabelsError."""
    if not isinstance(template, str):
        raise LabelsError(f"{where}: a template must be a string, got {type(template).__name__}")
    check_text(template, where)
    fix = "use {} or {label} once where the label goes, and write a literal brace as {{ or }}"
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise LabelsError(f"{where}: template {template!r} is malformed ({exc}); {fix}") from None
    for name, spec, conv in fields:
        if name not in PLACEHOLDERS or spec or conv:
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise LabelsError(f"{where}: template {template!r} uses {shown}; {fix}")
    if len(fields) != 1:
        raise LabelsError(f"{where}: template {template!r} must contain the placeholder exactly once "
                          f"(found {len(fields)}); {fix}")
    return template


def fill_template(template: str, name: str) -> str:
    """The prompt of ``template`` for the label ``name``."""
    return template.format(name, label=name)


def resolve_templates(spec: str | None) -> tuple[str, list[str]]:
    """Template set from a name (``imagenet80``, ``short``, ``photo``, ``none``) or a file of templates.

    Returns ``(name, templates)``; every template must contain the placeholder ``{}`` (or ``{label}``) once.
    """
    spec = spec or DEFAULT_TEMPLATES
    if spec in TEMPLATE_SETS:
        return spec, list(TEMPLATE_SETS[spec])
    p = Path(spec)
    if not p.is_file():
        raise LabelsError(f"unknown template set {spec!r}: use one of {', '.join(TEMPLATE_SETS)} "
                          f"or a text file with one template per line containing {{}}")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"{p}: cannot read the templates file ({exc}); save it as UTF-8 text") from None
    templates = [t.strip() for t in text.splitlines() if t.strip()]
    for t in templates:
        check_template(t, str(p))
    if not templates:
        raise LabelsError(f"{p}: no templates in file")
    return str(p), templates


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prompt_count(labels: Sequence[Label], templates: int) -> int:
    """How many prompts ``labels`` make with ``templates`` templates, counted without building them:
    (1 + synonyms) x templates + descriptions, summed over the labels."""
    return sum((1 + len(lab.synonyms)) * templates + len(lab.descriptions) for lab in labels)


def label_prompts(label: Label, templates: Sequence[str]) -> list[str]:
    """Every prompt for a label: each template applied to its name and synonyms, then its descriptions."""
    names = [label.name, *label.synonyms]
    return [fill_template(t, n) for n in names for t in templates] + list(label.descriptions)


def embed_labels(labels: Sequence[Label], templates: Sequence[str],
                 encode_texts: Callable[[list[str]], np.ndarray], batch_size: int = 256,
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
    """CLIP prompt ensembling: per label, the mean of L2-normalised prompt embeddings, renormalised.

    ``encode_texts`` maps a list of strings to raw (unnormalised) text embeddings [n, D].
    Returns the [N, D] float32 matrix, rows L2-normalised.
    """
    for t in templates:
        check_template(t)
    prompts: list[str] = []
    owner: list[int] = []
    for i, lab in enumerate(labels):
        ps = label_prompts(lab, templates)
        prompts += ps
        owner += [i] * len(ps)
    chunks = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        chunks.append(_normalize(encode_texts(chunk)))
        if progress:
            progress(len(chunk))
    emb = np.concatenate(chunks, axis=0)
    owner_arr = np.asarray(owner)
    out = np.stack([emb[owner_arr == i].mean(axis=0) for i in range(len(labels))])
    return _normalize(out)


def labels_document(labels: Sequence[Label], template_name: str, templates: Sequence[str]) -> dict:
    """The content of a bundle's ``labels.json``."""
    return {"labels": [lab.to_json() for lab in labels], "template_set": template_name,
            "templates": list(templates)}
