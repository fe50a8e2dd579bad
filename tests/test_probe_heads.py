"""Probe heads, SigLoss and the probe file formats against hand computations; the metrics
against direct numpy on fixed arrays."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.eval.depth_metrics import fit_scale_shift, image_depth_metrics
from cleandift_deploy.eval.knn import class_scores, pool, topk_accuracy
from cleandift_deploy.eval.segmentation_metrics import confusion, segmentation_summary
from cleandift_deploy.models.probe_heads import (
    DepthProbe,
    ProbeInfo,
    build_probe,
    depth_loss,
    load_probe,
    save_probe,
    sig_loss,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_depth_head_bins_and_linear_norm_by_hand() -> None:
    info = ProbeInfo(channels=3, classes=4, min_depth=1.0, max_depth=4.0)
    probe = DepthProbe(info)
    with torch.no_grad():
        probe.conv.weight.copy_(
            torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]])[..., None, None]
        )
        probe.conv.bias.copy_(torch.tensor([0.0, 0.5, -2.0, 0.0]))
    x = torch.tensor([0.3, 0.2, 1.0]).view(1, 3, 1, 1)
    # logits 0.3, 0.7, -1.0, -0.3 -> relu + 0.1 -> 0.4, 0.8, 0.1, 0.1 (sum 1.4); bins 1,2,3,4
    expected = (0.4 * 1 + 0.8 * 2 + 0.1 * 3 + 0.1 * 4) / 1.4
    assert probe(x).item() == pytest.approx(expected, rel=1e-6)
    assert probe.bins.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    cleandift = DepthProbe(ProbeInfo())
    assert cleandift.bins.flatten()[[0, -1]].tolist() == pytest.approx([0.1, 10.0])
    assert cleandift.bins.numel() == 256 and cleandift.conv.weight.shape == (256, 1280, 1, 1)


def test_depth_regression_variant_and_other_norms() -> None:
    x = torch.randn(2, 5, 3, 3)
    regression = build_probe(ProbeInfo(channels=5, head="regression"))
    assert torch.equal(regression(x), torch.relu(regression.conv(x)) + 0.1)
    softmax = build_probe(ProbeInfo(channels=5, classes=7, norm="softmax"))
    p = torch.softmax(softmax.conv(x), dim=1)
    torch.testing.assert_close(softmax(x), (p * softmax.bins).sum(1, keepdim=True))


def test_sigloss_by_hand_and_target_resized() -> None:
    pred = torch.tensor([1.0, 2.0, 4.0, 3.0])
    gt = torch.tensor([0.5, 1.0, 0.0, 2.0])  # third pixel invalid
    g = np.log(np.array([1.0, 2.0, 3.0]) + 1e-3) - np.log(np.array([0.5, 1.0, 2.0]) + 1e-3)
    expected = math.sqrt(np.var(g, ddof=1) + 0.15 * g.mean() ** 2)
    assert sig_loss(pred, gt).item() == pytest.approx(expected, rel=1e-5)
    assert sig_loss(pred, gt, warm_up=True).item() == pytest.approx(
        math.sqrt(0.15 * g.mean() ** 2), rel=1e-5
    )
    target = torch.rand(1, 1, 8, 8) + 0.5
    coarse = torch.rand(1, 1, 4, 4) + 0.5
    resized = torch.nn.functional.interpolate(target, (4, 4), mode="bilinear", align_corners=False)
    assert depth_loss(coarse, target).item() == pytest.approx(sig_loss(coarse, resized).item())
    with pytest.raises(CleanDiftError, match="no valid depth"):
        sig_loss(pred, torch.zeros(4))


def test_cleandift_released_layout_loads(tmp_path: Path) -> None:
    weight, bias = torch.randn(256, 1280, 1, 1) * 0.01, torch.randn(256) * 0.01
    path = tmp_path / "cleandift_sd21_depth_probe.safetensors"
    save_file({"weight": weight, "bias": bias}, str(path))
    loaded = load_probe(path)
    assert (loaded.info.task, loaded.info.tap, loaded.info.channels) == ("depth", "us6", 1280)
    assert (loaded.info.classes, loaded.info.bins, loaded.info.norm) == (256, "UD", "linear")
    assert torch.equal(loaded.probe.conv.weight, weight) and torch.equal(
        loaded.probe.conv.bias, bias
    )
    # the reference's computation on the same weights
    x = torch.randn(1, 1280, 3, 2)
    logit = torch.relu(torch.nn.functional.conv2d(x, weight, bias)) + 0.1
    logit = logit / logit.sum(dim=1, keepdim=True)
    bins = torch.linspace(0.1, 10, 256)
    expected = torch.einsum("ikmn,k->imn", [logit, bins]).unsqueeze(1)
    torch.testing.assert_close(loaded.probe(x), expected, rtol=1e-5, atol=1e-6)
    save_file(
        {"weight": torch.randn(256, 1280, 3, 3), "bias": bias}, str(tmp_path / "bad.safetensors")
    )
    with pytest.raises(CleanDiftError, match="not a 1x1 conv"):
        load_probe(tmp_path / "bad.safetensors")


def test_our_probe_file_round_trips(tmp_path: Path) -> None:
    info = ProbeInfo(task="segmentation", tap="us9", channels=6, head="bn-linear", classes=3)
    probe = build_probe(info)
    with torch.no_grad():
        probe.bn.running_mean.uniform_()  # type: ignore[union-attr]
    digest = save_probe(tmp_path / "p.safetensors", probe, info)
    loaded = load_probe(tmp_path / "p.safetensors")
    assert loaded.info == info and loaded.sha256 == digest
    x = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(loaded.probe(x), probe.eval()(x))


def test_depth_metrics_against_numpy() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.5, 5.0, (6, 7))
    truth[0, :3] = 0  # invalid
    prediction = truth * 1.3 + 0.2 + rng.normal(0, 0.05, truth.shape)
    valid = truth > 0
    g, p = truth[valid], prediction[valid]
    m = image_depth_metrics(prediction, truth)
    assert m["scale_aware"]["rmse"] == pytest.approx(np.sqrt(np.mean((g - p) ** 2)))
    assert m["scale_aware"]["abs_rel"] == pytest.approx(np.mean(np.abs(g - p) / g))
    ratio = np.maximum(g / p, p / g)
    for k in (1, 2, 3):
        assert m["scale_aware"][f"d{k}"] == pytest.approx(np.mean(ratio < 1.25**k))
    A = np.stack([p, np.ones_like(p)], axis=1)
    (s, t), *_ = np.linalg.lstsq(A, g, rcond=None)
    assert fit_scale_shift(prediction, truth) == pytest.approx((s, t))
    fitted = s * p + t
    assert m["scale_invariant"]["rmse"] == pytest.approx(np.sqrt(np.mean((g - fitted) ** 2)))
    assert m["scale_invariant"]["rmse"] < m["scale_aware"]["rmse"]


def test_miou_against_hand_confusion_with_ignore() -> None:
    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    prediction = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
    matrix = confusion(truth, prediction, 3)
    expected = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 1]])  # the 255 pixel is not counted
    np.testing.assert_array_equal(matrix, expected)
    summary = segmentation_summary(matrix)
    iou = [1 / (2 + 2 - 1), 2 / (3 + 3 - 2), 1 / (2 + 2 - 1)]
    assert summary["iou"] == pytest.approx(iou)
    assert summary["miou"] == pytest.approx(np.mean(iou))
    with pytest.raises(ValueError, match="outside"):
        confusion(np.array([5]), np.array([0]), 3)


def test_knn_weighted_and_majority_votes() -> None:
    train = pool(torch.randn(30, 8, 2, 2))
    labels = torch.arange(30) % 3
    queries = train[:6] + 0.01 * torch.randn(6, 8)
    queries = torch.nn.functional.normalize(queries, dim=1)
    scores = class_scores(train, labels, queries, 3, k=1)
    assert topk_accuracy(scores, labels[:6], (1,))["top1"] == 1.0
    sims = queries @ train.T
    top, index = sims.topk(10, dim=1)
    expected = torch.zeros(6, 3, dtype=torch.float64)
    for q in range(6):
        for s, i in zip(top[q], index[q], strict=True):
            expected[q, labels[i]] += math.exp(float(s) / 0.07)
    torch.testing.assert_close(class_scores(train, labels, queries, 3), expected, rtol=1e-5, atol=0)
    majority = class_scores(train, labels, queries, 3, vote="majority")
    counts = torch.stack([torch.bincount(labels[index[q]], minlength=3) for q in range(6)])
    assert torch.equal(majority.round(), counts.double())
