"""Every install line in the docs runs as written from a checkout: checked here (paths, extras, names);
dry-run against the package index in tests/test_install.py (slow, run by scripts/check_runtime_install.sh)."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(REPO.glob("packages/*/README.md"))]
#: names that are not on any package index (install them from the source tree)
OURS = {"edgeclip", "edgeclip-models"}


def install_lines() -> list[tuple[str, list[str]]]:
    """(where, the arguments after ``pip install``) of every install command in the docs, in code blocks and
    inline code."""
    out = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for code in re.findall(r"`([^`]*pip install[^`]*)`", line) or ([line] if line.startswith("    ") else []):
                m = re.search(r"pip install (.*)", code.split("#")[0].split("&&")[-1])
                if m:
                    out.append((f"{doc.relative_to(REPO)}:{n}", shlex.split(m.group(1))))
    return out


def _project(path: Path) -> dict:
    return tomllib.loads((path / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def check_argument(arg: str) -> str | None:
    """What is wrong with one argument of a documented ``pip install`` run from the repository root."""
    if arg.startswith("-"):
        return None
    path, _, extras = arg.partition("[")
    wanted = set(filter(None, extras.rstrip("]").split(",")))
    if path.startswith((".", "/", "dist/")) and not path.startswith("./../"):
        if path.startswith("dist/"):  # the wheel the README says how to build
            project = _project(REPO)
            if Path(path).name != f"{project['name']}-{project['version']}-py3-none-any.whl":
                return f"{arg}: `pip wheel` builds dist/{project['name']}-{project['version']}-py3-none-any.whl"
            folder = REPO
        else:
            folder = (REPO / path).resolve()
            if not (folder / "pyproject.toml").is_file():
                return f"{arg}: no project at {path} in the source tree"
        unknown = wanted - set(_project(folder).get("optional-dependencies", {}))
        return f"{arg}: no extra {', '.join(sorted(unknown))}" if unknown else None
    try:
        req = Requirement(arg)
    except InvalidRequirement as exc:
        return f"{arg}: {exc}"
    return f"{arg}: {req.name} is not on a package index; install it from the source tree" if req.name in OURS else None


def test_the_docs_have_install_lines_and_the_checker_sees_mistakes() -> None:
    lines = install_lines()
    assert len(lines) >= 8 and any("'.[cpu]'" in " ".join(shlex.quote(a) for a in args) or ".[cpu]" in args
                                   for _, args in lines)
    assert check_argument("edgeclip[cpu,serve]") and check_argument(".[cpu,nosuchextra]")
    assert check_argument("./packages/no-such-package") and check_argument("dist/edgeclip-9.9.9-py3-none-any.whl")
    assert check_argument(".[cpu,serve]") is None and check_argument("numpy<2") is None


@pytest.mark.parametrize("where, args", install_lines(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_install_line_names_what_exists(where: str, args: list[str]) -> None:
    assert [p for p in map(check_argument, args) if p] == [], where
