"""Scoring kinds (softmax for CLIP, sigmoid for SigLIP) from the manifest, through classify, eval, the
quantization agreement and the stream's `unknown` threshold."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeclip.options import LoadOptions

from edgeclip.bundle import load_bundle, update_bundle
from edgeclip.errors import BundleError, OptionError
from edgeclip.quant.agreement import LabelScoring, compare, zero_shot_probs
from edgeclip.runtime.classifier import Classifier, l2_normalize
from edgeclip.runtime.scoring import is_exclusive, probabilities, sigmoid
from edgeclip.stream.decisions import LabelDecider


def test_sigmoid_is_the_logistic_function_without_overflow() -> None:
    z = np.array([-1000.0, -30.0, -1.0, 0.0, 2.5, 40.0, 1000.0])
    with np.errstate(over="raise", under="ignore"):
        got = sigmoid(z)
    want = np.array([0.0, 1 / (1 + np.exp(30.0)), 1 / (1 + np.e), 0.5, 1 / (1 + np.exp(-2.5)), 1.0, 1.0])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
    assert sigmoid(np.float32([3.0])).dtype == np.float32


def test_sigmoid_scores_each_label_on_its_own() -> None:
    cos = np.array([[0.30, 0.10, -0.2], [0.05, 0.02, 0.01]])
    p = probabilities(cos, 10.0, -2.0, "sigmoid")
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-(10.0 * cos - 2.0))), rtol=1e-12)
    assert not np.allclose(p.sum(-1), 1.0)
    # a label's probability does not depend on the other labels (softmax's does)
    np.testing.assert_allclose(probabilities(cos[:, :1], 10.0, -2.0, "sigmoid"), p[:, :1])
    soft = probabilities(cos, 10.0, -2.0, "softmax")
    np.testing.assert_allclose(soft.sum(-1), 1.0)
    assert not np.allclose(probabilities(cos[:, :2], 10.0, 0.0, "softmax"), soft[:, :2])
    assert is_exclusive("softmax") and not is_exclusive("sigmoid")
    with pytest.raises(OptionError, match="unknown scoring 'sigmod' \\(did you mean 'sigmoid'\\?\\)"):
        probabilities(cos, 1.0, 0.0, "sigmod")


def _as_sigmoid(src: Path, dst: Path, bias: float) -> Path:
    shutil.copytree(src, dst)
    with update_bundle(dst) as draft:
        draft.manifest["model"].update(scoring="sigmoid", logit_bias=bias)
    return dst


def test_classify_scores_with_the_manifests_sigmoid_and_bias(tiny_vit_bundle: Path, tmp_path: Path,
                                                             cifar_test: Path) -> None:
    bundle = _as_sigmoid(tiny_vit_bundle, tmp_path / "b", -3.0)
    assert load_bundle(bundle).info.model.scoring == "sigmoid"
    clf = Classifier(bundle, LoadOptions(top_k=10))
    files = sorted((cifar_test / "cat").iterdir())[:4]
    preds = clf.classify(files)
    emb = clf.embed(files)
    want = 1.0 / (1.0 + np.exp(-(clf.logit_scale * emb @ l2_normalize(clf.label_matrix).T - 3.0)))
    for pred, row in zip(preds, want):
        got = dict(zip(pred.labels, pred.scores))
        np.testing.assert_allclose([got[n] for n in clf.labels], row, rtol=1e-5)
    softmax = Classifier(tiny_vit_bundle, LoadOptions(top_k=10)).classify(files)
    assert [p.labels for p in preds] == [p.labels for p in softmax]  # same ranking, other scores
    assert abs(sum(softmax[0].scores) - 1.0) < 1e-5 and abs(sum(preds[0].scores) - 1.0) > 1e-3


def test_a_manifest_names_only_known_scorings(tiny_vit_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_vit_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["model"]["scoring"] = "tanh"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="model.scoring must be one of softmax, sigmoid, got 'tanh'"):
        load_bundle(bundle)


def test_quantization_agreement_scores_as_the_bundle_does() -> None:
    rng = np.random.default_rng(0)
    labels = l2_normalize(rng.standard_normal((5, 16)))
    ref = rng.standard_normal((32, 16))
    cand = ref + 0.2 * rng.standard_normal(ref.shape)
    sig = LabelScoring(10.0, -5.0, "sigmoid")
    p = zero_shot_probs(ref, labels, sig)
    np.testing.assert_allclose(p, sigmoid(10.0 * l2_normalize(ref) @ labels.T - 5.0), rtol=1e-6)
    same = compare(ref, ref, labels, sig)
    assert same["top1_agreement"] == 1.0 and abs(same["mean_kl"]) < 1e-12
    moved = compare(ref, cand, labels, sig)
    assert moved["mean_kl"] > 0
    # top-1 is the best cosine under either scoring; the plain number keeps meaning a softmax scale
    assert moved["top1_agreement"] == compare(ref, cand, labels, 10.0)["top1_agreement"]
    np.testing.assert_allclose(zero_shot_probs(ref, labels, 10.0).sum(-1), 1.0)


def test_eval_reports_the_same_ranking_under_sigmoid(tiny_vit_bundle: Path, tmp_path: Path,
                                                     cifar_test: Path) -> None:
    from edgeclip.cli import main

    bundle = _as_sigmoid(tiny_vit_bundle, tmp_path / "b", -10.0)
    reports = []
    for b in (tiny_vit_bundle, bundle):
        out = tmp_path / f"{b.name}.json"
        assert main(["-q", "eval", str(b), str(cifar_test), "--limit", "60", "--templates", "short",
                     "--json", str(out)]) == 0
        reports.append(json.loads(out.read_text()))
    assert reports[0]["top1"] == reports[1]["top1"] and reports[0]["top5"] == reports[1]["top5"]


def test_unknown_threshold_reads_independent_sigmoid_probabilities() -> None:
    names = ["cat", "dog", "car"]
    cos = np.array([0.05, 0.08, 0.02])
    decider = LabelDecider(names, threshold=0.5)
    # no label is likely on its own (softmax would still give one of them 0.35+)
    assert decider.update(probabilities(cos, 20.0, -5.0, "sigmoid")).label == "unknown"
    assert probabilities(cos, 20.0, 0.0, "softmax").max() > 0.35
    assert decider.update(probabilities(np.array([0.05, 0.40, 0.02]), 20.0, -5.0, "sigmoid")).label == "dog"
