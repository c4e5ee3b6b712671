"""Bundle hardening: typed manifest, validation of everything used, locks, recovery, kills, label inputs.

The fast tests run a sample of the fuzz generator in tests/bundle_fuzz.py; the whole campaign (every
damaged bundle, 100 kills per writing command, 50 concurrent-writer trials) is marked slow and is also
scripts/fuzz_bundles.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import bundle_fuzz as bf
from edgeclip.bundle import (Bundle, Manifest, check_encoder_io, create_bundle, load_bundle, lock_path,
                             update_bundle)
from edgeclip.bundle.lock import bundle_lock
from edgeclip.cli import main
from edgeclip.errors import BundleBusyError, BundleError, LabelsError, OptionError

# ---------------------------------------------------------------------------------------------------------
# The typed manifest
# ---------------------------------------------------------------------------------------------------------


def test_typed_manifest_round_trips_an_exported_bundle(tiny_vit_bundle: Path) -> None:
    raw = json.loads((tiny_vit_bundle / "manifest.json").read_text())
    m = Manifest.parse(raw)
    assert m.to_dict() == raw, "parse + to_dict loses nothing (schema_version 1 stays as it is)"
    assert m.model.embed_dim == 16 and m.preprocess.size == (32, 32) and m.tokenizer.context_length == 77
    assert m.labels.count == 10 and m.files["labels.npy"].role == "label_embeddings"
    assert m.files["image_encoder.onnx"].get("format") == "onnx" and m.extra["parity"]


def test_every_manifest_problem_is_named_at_once(bundle_copy: Path) -> None:
    p = bundle_copy / "manifest.json"
    m = json.loads(p.read_text())
    m["model"]["embed_dim"] = "16"
    m["model"]["logit_scale"] = -1
    m["files"]["labels.json"]["sha256"] = 12345
    m["preprocess"]["std"] = [0.2, 0, 0.2]
    p.write_text(json.dumps(m))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy)
    msg = str(err.value)
    assert msg.startswith(f"{p}: 4 problems")
    for field in ("model.embed_dim", "model.logit_scale", "files['labels.json'].sha256", "preprocess.std"):
        assert field in msg


@pytest.mark.parametrize("text,match", [
    ('"logit_scale": NaN', "NaN is not a JSON number"), ('"logit_scale": 1e999', "out of range"),
    ('"logit_scale": 14.0, "logit_scale": 15.0', "appears twice"),
])
def test_non_finite_and_ambiguous_json_is_refused(bundle_copy: Path, text: str, match: str) -> None:
    p = bundle_copy / "manifest.json"
    raw = p.read_text()
    start = raw.index('"logit_scale": ')
    end = raw.index(",", start) if raw.index(",", start) < raw.index("\n", start) else raw.index("\n", start)
    p.write_text(raw[:start] + text + raw[end:])
    with pytest.raises(BundleError, match=match):
        load_bundle(bundle_copy)


def _forge(bundle: Path, name: str, data: bytes) -> None:
    bf._replace_content(name, data)(bundle)


def test_label_matrix_is_validated_without_pickle(bundle_copy: Path) -> None:
    _forge(bundle_copy, "labels.npy", bf._npy(np.array([{"x": 1}] * 10, dtype=object), allow_pickle=True))
    with pytest.raises(BundleError, match=r"labels\.npy: dtype object"):
        load_bundle(bundle_copy)
    nan = np.full((10, 16), 0.25, np.float32)
    nan[3, 3] = np.nan
    _forge(bundle_copy, "labels.npy", bf._npy(nan))
    with pytest.raises(BundleError, match="NaN or infinite"):
        load_bundle(bundle_copy)
    _forge(bundle_copy, "labels.npy", bf._npy(np.ones((10, 16), np.float32))[:-5])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(bundle_copy)


def test_symlinks_out_of_the_bundle_are_refused(bundle_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.json"
    shutil.copyfile(bundle_copy / "labels.json", outside)  # same bytes: the hash alone would pass
    (bundle_copy / "labels.json").unlink()
    (bundle_copy / "labels.json").symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle_copy)


def test_a_manifest_linked_out_of_the_bundle_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "manifest-elsewhere.json"
    shutil.copyfile(bundle_copy / "manifest.json", outside)
    (bundle_copy / "manifest.json").unlink()
    (bundle_copy / "manifest.json").symlink_to(outside)
    with pytest.raises(BundleError, match="manifest.json: resolves to .* outside the bundle"):
        load_bundle(bundle_copy)
    (bundle_copy / "manifest.json").unlink()
    shutil.copyfile(outside, bundle_copy / "manifest.copy.json")
    (bundle_copy / "manifest.json").symlink_to("manifest.copy.json")  # a link inside the bundle is a file of it
    assert load_bundle(bundle_copy).verified


def _forge_manifest_entry(bundle: Path, name: str) -> None:
    import hashlib

    m = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / name).read_bytes()
    m["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_an_image_encoder_wider_than_embed_dim_is_refused_at_load(bundle_copy: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    import edgeclip

    def flatten(width: object) -> None:  # pixels flattened: [batch, 3072], declared [batch, width]
        x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 32, 32])
        y = helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", width])
        graph = helper.make_graph([helper.make_node("Flatten", ["pixels"], ["emb"], axis=1)], "wide", [x], [y])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                  bundle_copy / "image_encoder.onnx")
        _forge_manifest_entry(bundle_copy, "image_encoder.onnx")

    photo = tmp_path / "photo.png"
    import cv2

    cv2.imwrite(str(photo), np.full((40, 40, 3), 128, np.uint8))
    flatten("width")  # a named width is not embed_dim: inspect and classify both refuse it (before: exit 1)
    with pytest.raises(BundleError, match=r"output 'emb' has shape \['batch', 'width'\]; expected \[batch, 16\]"):
        load_bundle(bundle_copy)
    assert main(["-q", "inspect", str(bundle_copy)]) == 2
    assert main(["-q", "classify", str(bundle_copy), str(photo)]) == 2
    flatten(16)  # a declared width that is not what the graph computes: the files verify...
    assert load_bundle(bundle_copy).verified
    backends = ["onnxruntime"] + (["openvino"] if _has("openvino") else [])
    for backend in backends:  # ...but loading the encoder finds out
        with pytest.raises(BundleError, match=r"gives \[3072\] values per image where the manifest's "
                                              r"model.embed_dim is 16"):
            edgeclip.load(bundle_copy, backend=backend)
    capsys.readouterr()
    assert main(["-q", "classify", str(bundle_copy), str(photo), "--backend", "onnxruntime"]) == 2
    assert "embed_dim is 16" in capsys.readouterr().err


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_external_data_must_stay_inside_and_be_recorded(bundle_copy: Path) -> None:
    pytest.importorskip("onnx")
    escaping = bf._onnx_with_location(bundle_copy / "image_encoder.onnx", "../w.bin")
    unrecorded = bf._onnx_with_location(bundle_copy / "image_encoder.onnx", "w.bin")
    _forge(bundle_copy, "image_encoder.onnx", escaping)
    with pytest.raises(BundleError, match=r"external data location '\.\./w\.bin'"):
        load_bundle(bundle_copy)
    _forge(bundle_copy, "image_encoder.onnx", unrecorded)
    (bundle_copy / "w.bin").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="is not recorded in the manifest as an external_data file"):
        load_bundle(bundle_copy)


def test_encoders_are_checked_against_the_manifest(bundle_copy: Path) -> None:
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["preprocess"]["size"] = [64, 64]
    m["model"]["image_size"] = [64, 64]
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"image_encoder\.onnx: .*has 32 at axis 2 where the manifest says 64"):
        load_bundle(bundle_copy)
    assert main(["inspect", str(bundle_copy)]) == 2, "inspect runs the same checks as classify"


def test_check_encoder_io_takes_onnxruntime_node_args(tiny_vit_bundle: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    b = load_bundle(tiny_vit_bundle)
    s = ort.InferenceSession(str(b.encoder("text")), providers=["CPUExecutionProvider"])
    check_encoder_io(b, "text", s.get_inputs(), s.get_outputs())
    with pytest.raises(BundleError, match="expected one float input"):
        check_encoder_io(b, "image", s.get_inputs(), s.get_outputs())


# ---------------------------------------------------------------------------------------------------------
# A sample of the damaged-bundle campaign
# ---------------------------------------------------------------------------------------------------------
def test_damaged_bundles_sample_is_clean(tiny_vit_bundle: Path, tmp_path: Path, cifar_test: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    image = sorted((cifar_test / "cat").iterdir())[0]
    cases = bf.pick(bf.damages(tiny_vit_bundle, outside), 24, seed=1)
    verdicts = {}
    for i, case in enumerate(cases):
        b = bf.fresh_copy(tiny_vit_bundle, tmp_path / f"d{i}")
        case.apply(b)
        verdict, details = bf.check_damaged(b, image)
        assert verdict in ("rejected", "accepted"), f"{case.name}: {verdict}: {details}"
        verdicts[case.name] = verdict
    assert list(verdicts.values()).count("rejected") >= len(cases) // 2, verdicts


# ---------------------------------------------------------------------------------------------------------
# Writers: lock, re-read under the lock, recovery, permissions, strict JSON
# ---------------------------------------------------------------------------------------------------------
def test_an_update_starts_from_the_manifest_on_disk_not_the_one_loaded(bundle_copy: Path) -> None:
    stale = load_bundle(bundle_copy)  # loaded at the start, like quantize does
    with update_bundle(bundle_copy) as draft:
        draft.manifest["first"] = 1
    with update_bundle(stale) as draft:
        draft.manifest["second"] = 2
    final = load_bundle(bundle_copy).manifest
    assert final["first"] == 1 and final["second"] == 2, "the first update was not lost"
    assert stale.manifest["first"] == 1


def test_concurrent_updates_in_threads_keep_both(bundle_copy: Path) -> None:
    errors: list[BaseException] = []

    def writer(key: str) -> None:
        try:
            with update_bundle(bundle_copy) as draft:
                time.sleep(0.2)  # hold the draft open so the two overlap
                draft.manifest[key] = True
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    m = load_bundle(bundle_copy).manifest
    assert m["a"] and m["b"]


def test_a_busy_lock_times_out_with_a_clear_error(bundle_copy: Path) -> None:
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with bundle_lock(bundle_copy):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    try:
        with pytest.raises(BundleBusyError, match=r"another edgeclip process is writing this bundle \(pid"):
            with update_bundle(bundle_copy, lock_timeout=0.3):
                pass
    finally:
        release.set()
        t.join()
    assert lock_path(bundle_copy).name == ".bundle.lock"


def test_an_interrupted_swap_is_rolled_back_by_the_next_load(bundle_copy: Path) -> None:
    old = bundle_copy.with_name(".bundle.old-4242")
    os.rename(bundle_copy, old)  # killed between the two renames: no bundle at the path
    draft = bundle_copy.with_name(".bundle.tmp-abc123")
    shutil.copytree(old, draft)
    (draft / "labels.npy").write_bytes(b"half")
    b = load_bundle(bundle_copy)
    assert b.verified and b.label_names()[0] == "airplane"
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == [".bundle.lock", "bundle"]


_SWAP_WRITER = """
import os, sys, time
os.environ["EDGECLIP_BUNDLE_SWAP"] = "rename"
from edgeclip.bundle import update_bundle
end = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    with update_bundle(sys.argv[1], verify=False) as draft:
        draft.manifest["note"] = str(n)
    n += 1
print(n)
"""


@pytest.mark.slow
def test_readers_never_fail_while_a_writer_swaps_with_two_renames(bundle_copy: Path) -> None:
    """A reader that arrives between the two renames waits for the writer (before: ~1 failed load in 3,000)."""
    writer = subprocess.Popen([sys.executable, "-c", _SWAP_WRITER, str(bundle_copy), "15"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    loads, failures = 0, []
    while writer.poll() is None:
        try:
            load_bundle(bundle_copy, verify=False)
            loads += 1
        except BundleError as exc:
            failures.append(str(exc))
    swaps = int(writer.stdout.read() or 0)
    assert swaps > 100 and loads > 1000, (swaps, loads)
    assert failures == []


def test_stale_temporaries_are_removed_by_a_load_or_a_write(bundle_copy: Path) -> None:
    for name in (".bundle.tmp-zzz", ".bundle.old-77"):
        (bundle_copy.parent / name).mkdir()
    unrelated = bundle_copy.parent / ".bundle.tmp-keep.tmp-x"  # another bundle's name, not ours
    unrelated.mkdir()
    load_bundle(bundle_copy, verify=False)
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == [".bundle.lock", ".bundle.tmp-keep.tmp-x",
                                                                     "bundle"]


def test_permissions_follow_the_umask_and_updates_keep_the_mode(tmp_path: Path) -> None:
    from onnx_models import make_bundle

    previous = os.umask(0o022)
    try:
        b = make_bundle(tmp_path / "b")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(b.stat().st_mode) == 0o755
    os.chmod(b, 0o750)
    with update_bundle(b) as draft:
        draft.manifest["note"] = "x"
    assert stat.S_IMODE(b.stat().st_mode) == 0o750


def test_json_is_written_strictly(bundle_copy: Path) -> None:
    with pytest.raises(BundleError, match="NaN or infinite"):
        with update_bundle(bundle_copy) as draft:
            draft.write_json("reports/x.json", {"score": float("nan")}, role="report")
    with pytest.raises(BundleError, match="NaN or infinite"):
        with update_bundle(bundle_copy) as draft:
            draft.manifest["parity"]["x"] = float("inf")
    load_bundle(bundle_copy)


def test_create_refuses_an_existing_path_in_library_terms(bundle_copy: Path) -> None:
    with pytest.raises(BundleError, match="overwrite=True"):
        with create_bundle(bundle_copy):
            pass


# ---------------------------------------------------------------------------------------------------------
# Kills and concurrent writers through the real CLI
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,event,when,expect", [
    ("rename", 1, "after", "old"),     # killed between the two renames: the path was empty
    ("exchange", 1, "after", "new"),   # killed after the exchange, before the old version was removed
])
def test_a_killed_relabel_leaves_the_old_or_the_new_bundle(bundle_copy: Path, mode: str, event: int, when: str,
                                                           expect: str) -> None:
    before = tuple(load_bundle(bundle_copy).label_names())
    rc, err = bf.run_killed(["-q", "labels", str(bundle_copy), "--labels", *bf.NEW_LABELS], event=event,
                            when=when, env={"EDGECLIP_BUNDLE_SWAP": mode})
    assert rc == -9, err
    verdict, details = bf.outcome_after_kill(bundle_copy, bf.label_marker, before, tuple(bf.NEW_LABELS))
    assert verdict == expect, details


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (apt-get install strace)")
def test_a_relabel_flushes_the_new_version_to_disk_before_the_swap(bundle_copy: Path, tmp_path: Path) -> None:
    """A real `edgeclip labels` under strace: every file of the new version and its folder are fsync'd in
    the draft, and the parent folder after the swap (a power cut cannot leave files the disk never got)."""
    trace = tmp_path / "trace.txt"
    cmd = ["strace", "-f", "-qq", "-y", "-e", "trace=fsync", "-o", str(trace),
           sys.executable, "-m", "edgeclip.cli", "-q", "labels", str(bundle_copy), "--labels", *bf.NEW_LABELS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "ptrace" in proc.stderr.lower():
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    synced = [line.split("<", 1)[1].split(">", 1)[0] for line in trace.read_text().splitlines()
              if "fsync(" in line and "<" in line and "= 0" in line]
    drafts = {Path(p) for p in synced if Path(p).parent == bundle_copy.parent
              and Path(p).name.startswith(f".{bundle_copy.name}.tmp-")}
    assert len(drafts) == 1, synced
    draft = drafts.pop()
    files = {p.relative_to(bundle_copy) for p in bundle_copy.rglob("*") if p.is_file() and not p.is_symlink()}
    flushed = [synced.index(str(draft / f)) for f in files if str(draft / f) in synced]
    assert files and len(flushed) == len(files), (sorted(map(str, files)), synced)
    assert str(bundle_copy.parent) in synced, "the parent folder after the swap"
    assert synced.index(str(bundle_copy.parent)) > max(flushed)
    assert list(load_bundle(bundle_copy).label_names()) == bf.NEW_LABELS


def test_sigterm_stops_a_quantize_cleanly(bundle_copy: Path, tmp_path: Path) -> None:
    """`kill` (SIGTERM) in the middle of a quantize: exit 143, no temporary left, the bundle old or new."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", "edgeclip.cli", "-q", "quantize", str(bundle_copy), *bf.QUANTIZE]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # the recipe's scratch folder exists while ONNX Runtime calibrates (its imports are done by then)
    while time.monotonic() < deadline and proc.poll() is None and not list(tmp.glob("edgeclip-quant-*")):
        time.sleep(0.005)
    assert proc.poll() is None, "quantize ended before it calibrated"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143, proc.stderr.read()
    assert "quantize: terminated" in proc.stderr.read()
    assert list(tmp.glob("edgeclip-*")) == []  # (other libraries keep files of their own there)
    verdict, details = bf.outcome_after_kill(bundle_copy, bf.quant_marker, False, True)
    assert verdict == "old", details


@pytest.mark.slow
def test_two_relabels_at_once_both_succeed(bundle_copy: Path) -> None:
    a, b = ["cat", "dog"], ["ship", "truck", "frog"]
    results = bf.run_concurrent([["-q", "labels", str(bundle_copy), "--labels", *a],
                                 ["-q", "labels", str(bundle_copy), "--labels", *b]])
    assert [rc for rc, _ in results] == [0, 0], results
    assert tuple(load_bundle(bundle_copy).label_names()) in (tuple(a), tuple(b))


# ---------------------------------------------------------------------------------------------------------
# Label inputs
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("template", ["a photo of {x}.", "a photo of {0}.", "a photo of { a", "photo }",
                                      "{} and {}", "no placeholder", "{:>9}", "{label!r}"])
def test_bad_templates_are_labels_errors(tmp_path: Path, template: str) -> None:
    from edgeclip.runtime.labels import Label, embed_labels, resolve_templates

    p = tmp_path / "t.txt"
    p.write_text(template + "\n")
    with pytest.raises(LabelsError, match="template"):
        resolve_templates(str(p))
    with pytest.raises(LabelsError):
        embed_labels([Label("cat")], [template], lambda texts: np.ones((len(texts), 4)))


def test_label_placeholder_and_literal_braces(tmp_path: Path) -> None:
    from edgeclip.runtime.labels import Label, label_prompts, resolve_templates

    p = tmp_path / "t.txt"
    p.write_text("a photo of a {label}.\n{{braces}} around {}\n")
    _, templates = resolve_templates(str(p))
    assert label_prompts(Label("cat"), templates) == ["a photo of a cat.", "{braces} around cat"]


def test_csv_is_parsed_as_csv(tmp_path: Path) -> None:
    from edgeclip.runtime.labels import read_labels_file

    p = tmp_path / "l.csv"
    p.write_text('name,descriptions\n"sea\nlion","a large, loud marine mammal"\ndog,"a pet\nthat barks"\n')
    labels = read_labels_file(p)
    assert [lab.name for lab in labels] == ["sea lion", "dog"]
    assert labels[1].descriptions == ["a pet\nthat barks"]
    p.write_text('name\n"cat,kitty\ndog,puppy\n')  # an unterminated quote
    with pytest.raises(LabelsError, match="not valid CSV"):
        read_labels_file(p)


def test_a_huge_label_is_tokenized_in_bounded_time() -> None:
    from edgeclip.runtime.tokenizer import ClipTokenizer

    tok = ClipTokenizer()
    rng = np.random.default_rng(0)
    letters = "".join(chr(c) for c in rng.integers(97, 123, 200_000))
    words = " ".join(["a photo of a very long label"] * 30_000)
    for text in (letters, words, "x" * 200_000, "&amp;" * 40_000):
        start = time.perf_counter()
        row = tok(text)[0]
        assert time.perf_counter() - start < 2.0, "was 100 s before truncating early"
        assert row[-1] == tok.eot_token_id
    assert tok(words)[0].tolist()[1:76] == tok.encode(words[:2000])[:75]
    with pytest.raises(OptionError):
        tok([None])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------------------
# The whole campaign (slow; also scripts/fuzz_bundles.py)
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("bundle-campaign")
    return bf.make_base_bundle(work / "base"), work


@pytest.mark.slow
def test_campaign_every_damaged_bundle(campaign: tuple[Path, Path]) -> None:
    import fuzz_bundles

    fig = fuzz_bundles.damaged_campaign(*campaign, n=10 ** 6, seed=0)
    assert fig["tried"] >= 300 and fig["traceback"] == 0 and fig["data lost"] == 0, fig


@pytest.mark.slow
def test_campaign_kills(campaign: tuple[Path, Path]) -> None:
    import fuzz_bundles

    for name, fig in fuzz_bundles.kill_campaign(*campaign, n=100, seed=0).items():
        assert fig["tried"] == 100 and fig["traceback"] == 0 and fig["data lost"] == 0, (name, fig)


@pytest.mark.slow
def test_campaign_concurrent_writers(campaign: tuple[Path, Path]) -> None:
    import fuzz_bundles

    fig = fuzz_bundles.concurrent_campaign(*campaign, n=50)
    assert fig["tried"] == 50 and fig["traceback"] == 0 and fig["data lost"] == 0, fig


@pytest.fixture(autouse=True, scope="module")
def _scripts_on_path() -> None:
    import sys

    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)


def test_bundle_dataclass_still_accepts_a_plain_manifest(tiny_vit_bundle: Path) -> None:
    raw = json.loads((tiny_vit_bundle / "manifest.json").read_text())
    b = Bundle(tiny_vit_bundle, raw)
    assert b.info.model.embed_dim == 16 and b.embed_dim == 16
