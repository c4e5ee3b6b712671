"""16 cameras for minutes: resident memory and thread count stay flat (slow; scripts/soak_watch.py runs the
10-minute version on a full-size model)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("yaml", reason="the 'watch' extra (pyyaml, paho-mqtt) is not installed")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sixteen_cameras_keep_memory_and_threads_flat(tiny_vit_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "soak_watch.py"), str(tiny_vit_bundle),
                           "--sources", "16", "--synthetic", "--fps", "10", "--on", "always", "--seconds", "150",
                           "--warmup", "30", "--every", "15", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.exists(), proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["threads_flat"] and result["rss_growth_pct"] <= 5.0, result
    assert result["end"]["crops"] > 5000  # it really classified all along
    assert proc.returncode == 0
