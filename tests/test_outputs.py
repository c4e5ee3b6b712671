"""One rule for every output of every command: checked before any work, exit 2 naming the option and the fix."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

import edgeclip
from edgeclip.cli import main

#: (command line before the output flag, the flag, whether it names a folder): every output of every command
OUTPUTS = [
    (["classify", "{bundle}", "{photos}"], "--output", False),
    (["classify", "{bundle}", "{photos}", "--ray"], "--parquet", True),
    (["eval", "{bundle}", "{photos}"], "--json", False),
    (["eval", "{bundle}", "{photos}"], "--confusion", False),
    (["stream", "{bundle}", "--source", "synthetic://64x48"], "--jsonl", False),
    (["stream", "{bundle}", "--source", "synthetic://64x48"], "--video-out", False),
    (["bench", "{bundle}"], "--json", False),
    (["bench", "{bundle}"], "--png", False),
    (["export", "--labels", "a", "b"], "--out", True),
    (["watch", "{photos}"], "--jsonl", False),  # the configuration is never read: the output is refused first
    (["watch", "{photos}"], "--snapshots", True),
]
OUTPUT_FIELDS = {"output", "parquet", "json", "confusion", "jsonl", "video_out", "png", "snapshots"}


def test_the_table_covers_every_output_option() -> None:
    from edgeclip.bench import BenchOptions
    from edgeclip.watch import WatchOptions

    classes = [edgeclip.BatchOptions, edgeclip.EvalOptions, edgeclip.StreamOutputs, BenchOptions,
               edgeclip.LoadOptions, edgeclip.ExportOptions, edgeclip.QuantizeOptions, edgeclip.SourceOptions,
               edgeclip.StreamOptions, WatchOptions]
    marked = {f.name for c in classes for f in dataclasses.fields(c) if f.metadata.get("output")}
    assert marked == OUTPUT_FIELDS


def _unwritable(tmp_path: Path) -> Path:
    """A place this process cannot write: a read-only folder, or (as root, who may write anywhere) /proc."""
    if os.geteuid() == 0:
        return Path("/proc/edgeclip-out.csv")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "out.csv"


@pytest.mark.parametrize("case", ["missing folder", "wrong kind", "unwritable"])
@pytest.mark.parametrize("argv, flag, folder", OUTPUTS, ids=[f"{a[0]} {f}" for a, f, _ in OUTPUTS])
def test_a_bad_output_stops_the_command_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list,
                                                        flag: str, folder: bool, case: str) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    existing_file = tmp_path / "a-file"
    existing_file.write_text("x")
    out = {"missing folder": tmp_path / "no" / "such" / "out.csv",
           "wrong kind": existing_file if folder else tmp_path,
           "unwritable": _unwritable(tmp_path)}[case]
    no_bundle = tmp_path / "no-bundle"  # never opened: the output is refused first
    line = [a.format(bundle=no_bundle, photos=photos) for a in argv] + [flag, str(out)]
    assert main(line) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag} {out}" in err, err
    assert {"missing folder": "does not exist; create it first", "unwritable": "cannot write in",
            "wrong kind": "is a file; give a folder" if folder else "is a folder; give a file name"}[case] in err
    assert not no_bundle.exists() and "no-bundle" not in err
