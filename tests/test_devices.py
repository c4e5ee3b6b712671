"""Device profiles and detection: every profile detected from a fixture tree of device files."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from edgeclip.cli import main
from edgeclip.bundle import load_bundle
from edgeclip.devices.choice import backend_order, open_image_encoder
from edgeclip.options import LoadOptions
from edgeclip.devices.catalog import get_profile, load_profiles, profile_from_dict
from edgeclip.devices.detect import detect, l4t_software, parse_tegra_release, run_command
from edgeclip.errors import DeviceError

FIXTURES = Path(__file__).parent / "fixtures" / "devices"

#: fixture tree -> (profile, exact match, evidence that must appear in the reasons)
EXPECTED = {
    "jetson-nano": ("jetson-nano", True, "'Jetson Nano'"),
    "jetson-xavier-nx": ("jetson-xavier-nx", True, "'Xavier NX'"),
    "jetson-orin-nano": ("jetson-orin-nano", True, "'Orin Nano'"),
    "jetson-orin-nx": ("jetson-orin-nx", True, "'Orin NX'"),
    "jetson-agx-orin": ("jetson-agx-orin", True, "'AGX Orin'"),
    "jetson-custom-carrier": ("jetson-orin-nano", False, "L4T R36 suggests jetson-orin-nano"),
    "desktop-gpu": ("desktop-gpu", True, "NVIDIA GeForce RTX 4090, compute capability 8.9"),
    "x86-avx2": ("x86-avx2", True, "with avx2"),
    "x86-avx512-vnni": ("x86-avx512-vnni", True, "avx512_vnni"),
    "x86-alder-lake": ("x86-avx512-vnni", True, "avx_vnni"),
    "arm64-cpu": ("arm64-cpu", True, "asimddp"),
    "raspberry-pi-4": ("arm64-cpu", True, "aarch64"),
    "rk3588-orangepi-5": ("rk3588", True, "'rockchip,rk3588': profile rk3588"),
    "rk3588-rock-5b-mainline": ("rk3588", True, "'radxa,rock-5b', 'rockchip,rk3588'"),
    "rk3566-radxa-zero3": ("rk3566", True, "'rockchip,rk3566': profile rk3566"),
    "rk3568-rock-3a": ("rk3568", True, "'rockchip,rk3568': profile rk3568"),
}


def fixture_runner(root: Path):
    """A command runner that answers nvidia-smi from ``root/nvidia-smi.txt`` (missing file: not installed)."""
    def run(argv: Sequence[str]) -> str | None:
        saved = root / f"{argv[0]}.txt"
        return saved.read_text() if saved.is_file() else None
    return run


def detect_fixture(name: str):
    root = FIXTURES / name
    return detect(root, fixture_runner(root))


@pytest.mark.parametrize("tree", sorted(EXPECTED))
def test_fixture_tree_detects_its_profile(tree: str) -> None:
    profile, exact, evidence = EXPECTED[tree]
    found = detect_fixture(tree)
    assert found.profile.name == profile, found.reasons
    assert found.exact is exact
    assert any(evidence in r for r in found.reasons), found.reasons


def test_every_profile_is_covered_by_a_fixture_tree() -> None:
    assert set(load_profiles()) == {p for p, _, _ in EXPECTED.values()}
    assert {p.kind for p in load_profiles().values()} == {"jetson", "gpu", "npu", "cpu"}


def test_jetson_facts_name_the_release_and_its_tensorrt() -> None:
    nano = detect_fixture("jetson-nano")
    assert nano.facts.l4t == "32.7.1" and nano.facts.model == "NVIDIA Jetson Nano Developer Kit"
    assert any("JetPack 4.6.1+, ships TensorRT 8.2" in r for r in nano.reasons)
    orin = detect_fixture("jetson-orin-nano")
    assert any("L4T R36.4.0 (JetPack 6.1/6.2, ships TensorRT 10.3)" in r for r in orin.reasons)
    assert orin.profile.sm == "8.7" and orin.profile.tensorrt == "10.3"
    # a Jetson's arm64 CPU flags never pick a CPU profile
    assert "asimddp" in orin.facts.cpu_flags and orin.profile.kind == "jetson"


def test_l4t_release_table() -> None:
    assert parse_tegra_release("# R36 (release), REVISION: 4.3, GCID: 1") == "36.4.3"
    assert parse_tegra_release("garbage") is None
    assert l4t_software("32.7.1") == ("4.6.1+", "8.2")
    assert l4t_software("35.4.1") == ("5.1", "8.5")
    assert l4t_software("36.3.0") == ("6.0", "8.6")
    assert l4t_software("36.4.0") == ("6.1/6.2", "10.3")
    assert l4t_software("99.0") is None


def test_desktop_gpu_takes_sm_from_nvidia_smi_and_wins_over_cpu_flags() -> None:
    found = detect_fixture("desktop-gpu")
    assert found.profile.sm == "8.9"
    assert "avx_vnni" in found.facts.cpu_flags  # the CPU would match a CPU profile; the GPU comes first
    assert load_profiles()["desktop-gpu"].sm is None  # the built-in profile stays unchanged


def test_arm64_without_dot_product_runs_fp32() -> None:
    pi = detect_fixture("raspberry-pi-4")
    assert pi.profile.precision == "fp32"
    assert any("no asimddp" in r for r in pi.reasons)
    assert detect_fixture("arm64-cpu").profile.precision == "int8"
    assert any("not a Jetson" in r for r in pi.reasons)  # a device-tree model alone is not a Jetson


def test_empty_tree_falls_back_with_a_reason(tmp_path: Path) -> None:
    found = detect(tmp_path, fixture_runner(tmp_path), machine="aarch64")
    assert found.profile.name == "arm64-cpu"
    assert any("from the platform" in r for r in found.reasons)


def test_profiles_are_consistent() -> None:
    for p in load_profiles().values():
        assert p.backends[-1] == "onnxruntime:cpu" and p.ort_providers[-1] == "cpu", p.name
        if p.uses_gpu:
            assert p.backends[0] == "tensorrt" and p.workspace_mb > 0, p.name
        if p.kind == "jetson":
            assert p.sm and p.tensorrt, p.name
        if p.precision == "int8":
            assert p.int8_target, p.name
    nano = get_profile("jetson-nano")
    assert (nano.precision, nano.int8_target, nano.tensorrt, nano.sm) == ("fp16", None, "8.2", "5.3")
    assert get_profile("x86-avx2").int8_target == "cpu" and get_profile("jetson-orin-nx").int8_target == "tensorrt"


def test_bad_profiles_are_rejected() -> None:
    good = get_profile("jetson-nano").to_dict()
    assert profile_from_dict(good) == get_profile("jetson-nano")
    for change, word in [({"precision": "int4"}, "precision"), ({"backends": ["tensorrt", "magic"]}, "backends"),
                         ({"opt_batch": 8, "max_batch": 4}, "opt_batch"), ({"colour": "green"}, "unknown")]:
        with pytest.raises(DeviceError, match=word):
            profile_from_dict({**good, **change})
    with pytest.raises(DeviceError, match="unknown device profile 'nano'.*jetson-nano"):
        get_profile("nano")


def test_run_command_returns_none_for_missing_or_failing_commands() -> None:
    assert run_command(["edgeclip-no-such-command-xyz"]) is None
    assert run_command(["false"]) is None
    assert run_command(["echo", "hi"]) == "hi\n"


def test_backend_order_explains_each_fallback(caplog: pytest.LogCaptureFixture) -> None:
    profile = get_profile("jetson-orin-nano")
    with caplog.at_level(logging.INFO, logger="edgeclip.devices"):
        order = backend_order(profile, probes={"onnxruntime": {"providers": ["CPUExecutionProvider"]}})
    assert [c.label for c in order] == list(profile.backends)
    chosen = next(c for c in order if c.available)
    assert chosen.label == "onnxruntime:cpu" and chosen.providers == ("cpu",)
    assert not order[0].available and "tensorrt" in order[0].reason
    text = caplog.text
    assert "falling back to onnxruntime:cpu" in text
    assert "TensorrtExecutionProvider is not in this onnxruntime build" in text
    assert "CUDAExecutionProvider is not in this onnxruntime build" in text

    order = backend_order(profile, probes={"onnxruntime": {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
                                           "tensorrt": {"installed": False}})
    chosen = next(c for c in order if c.available)
    assert chosen.label == "onnxruntime:cuda" and chosen.providers == ("cuda", "cpu")


def test_cli_devices_lists_profiles_and_this_machine(capsys: pytest.CaptureFixture) -> None:
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for name in load_profiles():
        assert name in out
    assert "this machine:" in out
    assert main(["devices", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["profiles"]) == len(load_profiles()) and data["detected"]["reasons"]


def test_open_image_encoder_on_a_cpu_profile_opens_onnx_runtime_cpu(tiny_vit_bundle: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    bundle = load_bundle(tiny_vit_bundle)
    with caplog.at_level(logging.INFO, logger="edgeclip.devices"):
        # the profile prefers INT8; the bundle has only FP32 (OpenVINO, first where installed: tests/test_openvino.py)
        encoder, choice = open_image_encoder(bundle, get_profile("x86-avx512-vnni"), LoadOptions(backend="onnxruntime"))
    assert encoder.name == "onnxruntime:cpu" and encoder.path == bundle.encoder("image", "fp32")
    assert choice.precision == "fp32" and "no INT8 file" in choice.describe()
    assert "no INT8 file that onnxruntime:cpu runs" in caplog.text
    height, width = bundle.preprocess["size"]
    out = encoder.run(np.zeros((2, 3, height, width), np.float32))
    assert out.shape == (2, int(bundle.model["embed_dim"]))
