"""``edgeclip classify --ray`` and ``edgeclip.batch.classify_ray``: a local Ray (127.0.0.1), two workers."""
from __future__ import annotations

import csv
import importlib.util
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeclip.cli import main

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def local_ray():
    from edgeclip.batch.ray import init_ray

    yield init_ray(None, num_cpus=2)
    ray.shutdown()


def _csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_ray_gives_the_rows_of_a_local_run(local_ray, tiny_vit_bundle: Path, cifar_test: Path, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a photo \xff\xd9")
    inputs = [str(cifar_test / "*" / "00[0-9][0-9].jpg"), str(bad)]  # 1,000 photos and a corrupt file
    here, there = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert main(["-q", "classify", str(tiny_vit_bundle), *inputs, "-o", str(here), "--top-k", "3"]) == 1
    assert main(["-q", "classify", str(tiny_vit_bundle), *inputs, "-o", str(there), "--top-k", "3",
                 "--ray", "--workers", "2"]) == 1
    a, b = _csv(here), _csv(there)
    assert len(a) == len(b) == 1001
    assert [(r["path"], r["label"], r["top_labels"]) for r in a] == [(r["path"], r["label"], r["top_labels"]) for r in b]
    assert np.allclose([float(r["score"] or 0) for r in a], [float(r["score"] or 0) for r in b], atol=1e-5)
    assert b[-1]["path"] == str(bad) and "corrupt.jpg" in b[-1]["error"] and b[-1]["label"] == ""
    assert sum(bool(r["error"]) for r in b) == 1
    assert _listening_only_on_loopback()


def _listening_only_on_loopback() -> bool:
    """No process of this local Ray listens on a non-loopback address (checked with ss where present)."""
    try:
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return True
    pids = {str(p) for p in _ray_pids()}
    mine = [line for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]
    return bool(mine) and all(line.split()[3].startswith(("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:"))
                              for line in mine)


def _ray_pids() -> list[int]:
    import os

    import psutil

    me = psutil.Process(os.getpid())
    return [me.pid] + [c.pid for c in me.children(recursive=True)]


def test_classify_ray_in_python_with_parquet_shards(local_ray, tiny_vit_bundle: Path, cifar_test: Path,
                                                    tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from edgeclip.batch import classify_ray

    files = sorted(cifar_test.glob("ship/00[0-4]?.jpg")) + [tmp_path / "missing.jpg"]
    rows = list(classify_ray(tiny_vit_bundle, files, workers=2, batch_size=8, top_k=2, parquet=tmp_path / "pq"))
    assert [r.path for r in rows] == files
    assert all(r.ok for r in rows[:-1]) and "no such file" in rows[-1].error
    table = pq.read_table(tmp_path / "pq").to_pylist()
    assert len(list((tmp_path / "pq").glob("*.parquet"))) > 1  # shards, written by the workers
    assert [Path(t["path"]).name for t in table] == [f.name for f in files]
    assert [t["label"] for t in table[:-1]] == [r.prediction.label for r in rows[:-1]]
    assert table[0]["top_labels"] == rows[0].prediction.labels and len(table[0]["top_scores"]) == 2


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="the 'openvino' extra is not installed")
def test_cli_load_options_reach_the_ray_actors(local_ray, tiny_vit_bundle: Path, cifar_test: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    cache = tmp_path / "ov-cache"
    out = tmp_path / "rows.csv"
    assert main(["classify", str(tiny_vit_bundle), str(cifar_test / "ship" / "000[0-9].jpg"), "-o", str(out),
                 "--ray", "--workers", "2", "--backend", "openvino", "--hint", "throughput",
                 "--cache-dir", str(cache), "--threads", "1"]) == 0
    err = capsys.readouterr().err
    ran = re.findall(r"image encoder: (.*)", err)
    assert ran and all("on openvino:cpu" in line and f"throughput hint, 1 threads, cache {cache}" in line
                       for line in ran), err
    assert list(cache.rglob("*.blob"))  # the actors compiled into the folder asked for
    assert len(_csv(out)) == 10


def test_ray_with_q_prints_nothing(tiny_vit_bundle: Path, cifar_test: Path, tmp_path: Path) -> None:
    """``-q`` is quiet with ``--ray`` too: no token banner, no worker log lines (a fresh process, its own Ray)."""
    import os
    import sys

    out = tmp_path / "rows.csv"
    run = subprocess.run([sys.executable, "-m", "edgeclip", "-q", "classify", str(tiny_vit_bundle),
                          str(cifar_test / "ship" / "000[0-9].jpg"), "-o", str(out), "--ray", "--workers", "1"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_ADDRESS": ""})
    assert run.returncode == 0, run.stderr
    assert run.stderr == "" and run.stdout == "", (run.stdout, run.stderr)
    assert len(_csv(out)) == 10
