"""Tests of detutils.losses.focal: sigmoid focal vs torchvision, quality focal by hand."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tv_ops

from detutils.assigners import BACKGROUND, IGNORE
from detutils.losses import quality_focal_loss, sigmoid_focal_loss, weight_reduce_loss

LN2 = math.log(2.0)


def _logits_and_targets(seed: int, rows: int = 30, classes: int = 5):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=generator) * 3
    targets = (torch.rand(rows, classes, generator=generator) < 0.2).float()
    return logits, targets


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 1.5)])
def test_sigmoid_focal_equals_torchvision(reduction, alpha, gamma):
    logits, targets = _logits_and_targets(0)
    ours = sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
    theirs = tv_ops.sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
    torch.testing.assert_close(ours, theirs)


def test_sigmoid_focal_by_hand():
    # logit 0: p = 0.5, BCE = ln 2 for either target, (1 - p_t)^2 = 1/4;
    # alpha_t = 0.25 for the target 1, 0.75 for the target 0
    loss = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(loss, torch.tensor([0.25 * 0.25 * LN2, 0.75 * 0.25 * LN2]))
    # a confident right answer (logit 5 for a target 1) costs almost nothing
    easy = sigmoid_focal_loss(torch.tensor([5.0]), torch.tensor([1.0]))
    assert easy < 1e-5 * loss[0]


def test_sigmoid_focal_weight_and_avg_factor():
    logits, targets = _logits_and_targets(1)
    weight = torch.rand(30, generator=torch.Generator().manual_seed(2))
    per_element = sigmoid_focal_loss(logits, targets)
    loss = sigmoid_focal_loss(logits, targets, reduction="mean", weight=weight, avg_factor=7.0)
    torch.testing.assert_close(loss, (per_element * weight[:, None]).sum() / 7.0)


def test_quality_focal_by_hand():
    # Row 0: class 0 is true with quality 0.5 and the logits are 0 (p = 0.5): the true
    # class costs BCE(0, 0.5) |0.5 - 0.5|^2 = 0; class 1 (target 0) costs ln 2 * 0.5^2.
    # Row 1: logit ln 3 (p = 0.75) on the true class, quality 0.25:
    # BCE = softplus(ln 3) - 0.25 ln 3 = ln 4 - 0.25 ln 3, times |0.25 - 0.75|^2 = 1/4;
    # its other class (logit 0) costs ln 2 / 4.
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 0])
    scores = torch.tensor([0.5, 0.25])
    loss = quality_focal_loss(logits, labels, scores, reduction="none")
    row1 = (math.log(4.0) - 0.25 * math.log(3.0)) * 0.25 + LN2 / 4
    torch.testing.assert_close(loss, torch.tensor([LN2 / 4, row1]))


def test_quality_focal_background_rows_learn_zero():
    # a background row (BACKGROUND or IGNORE) has target 0 at every class:
    # sum over classes of BCE(x, 0) * sigmoid(x)^beta
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    labels = torch.tensor([BACKGROUND, IGNORE])
    loss = quality_focal_loss(logits, labels, torch.tensor([0.9, 0.9]), reduction="none")
    expected = (F.softplus(logits) * torch.sigmoid(logits) ** 2).sum(dim=1)
    torch.testing.assert_close(loss, expected)


def _reference_qfl(logits, labels, scores, beta):
    """The GFL reference's formulation: every entry as a negative, then the positives'
    true-class entries overwritten; mmdet's background label is C."""
    probs = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    loss = loss * probs.pow(beta)
    num_classes = logits.shape[1]
    mmdet_labels = torch.where(labels < 0, torch.full_like(labels, num_classes), labels)
    rows = ((mmdet_labels >= 0) & (mmdet_labels < num_classes)).nonzero().squeeze(1)
    classes = mmdet_labels[rows]
    modulator = (scores[rows] - probs[rows, classes]).abs().pow(beta)
    bce = F.binary_cross_entropy_with_logits(logits[rows, classes], scores[rows], reduction="none")
    loss[rows, classes] = bce * modulator
    return loss.sum(dim=1)


@pytest.mark.parametrize("beta", [2.0, 1.0])
def test_quality_focal_equals_reference_formulation(beta):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 6, generator=generator) * 2
    labels = torch.randint(-1, 6, (40,), generator=generator)
    scores = torch.rand(40, generator=generator)
    ours = quality_focal_loss(logits, labels, scores, beta, reduction="none")
    torch.testing.assert_close(ours, _reference_qfl(logits, labels, scores, beta))
    weight = torch.rand(40, generator=generator)
    mean = quality_focal_loss(logits, labels, scores, beta, weight=weight, avg_factor=5.0)
    torch.testing.assert_close(mean, (ours * weight).sum() / 5.0)


def test_quality_focal_with_hard_targets_and_beta_zero_is_bce():
    logits, _ = _logits_and_targets(4, rows=10, classes=3)
    labels = torch.tensor([0, 1, 2, -1, 0, 1, 2, -1, 0, 1])
    one_hot = F.one_hot(labels.clamp(min=0), 3).float() * (labels >= 0)[:, None]
    loss = quality_focal_loss(logits, labels, torch.ones(10), beta=0.0, reduction="sum")
    torch.testing.assert_close(
        loss, F.binary_cross_entropy_with_logits(logits, one_hot, reduction="sum")
    )


def test_quality_focal_gradient_flows_to_every_logit():
    logits = torch.randn(5, 4, requires_grad=True)
    quality_focal_loss(logits, torch.tensor([0, -1, 3, 2, -1]), torch.rand(5)).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert (logits.grad != 0).all()


def test_quality_focal_bad_inputs():
    with pytest.raises(ValueError, match="not a class"):
        quality_focal_loss(torch.zeros(2, 3), torch.tensor([0, 3]), torch.zeros(2))
    with pytest.raises(ValueError, match="labels and scores"):
        quality_focal_loss(torch.zeros(2, 3), torch.tensor([0]), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        quality_focal_loss(torch.zeros(3), torch.tensor([0]), torch.zeros(1))


def test_weight_reduce_loss():
    loss = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    weight = torch.tensor([1.0, 0.5])  # one weight per row
    torch.testing.assert_close(weight_reduce_loss(loss, weight, "none"), loss * weight[:, None])
    torch.testing.assert_close(weight_reduce_loss(loss, weight, "sum"), torch.tensor(6.5))
    torch.testing.assert_close(weight_reduce_loss(loss, None, "mean"), torch.tensor(2.5))
    torch.testing.assert_close(weight_reduce_loss(loss, weight, "mean", 2.0), torch.tensor(3.25))
    with pytest.raises(ValueError, match="avg_factor"):
        weight_reduce_loss(loss, None, "sum", 2.0)
    with pytest.raises(ValueError, match="reduction"):
        weight_reduce_loss(loss, None, "average")
    with pytest.raises(ValueError, match="broadcast"):
        weight_reduce_loss(loss, torch.ones(3), "sum")
    # an empty loss is zero, with a gradient path, not the NaN of an empty mean
    empty = torch.zeros(0, requires_grad=True)
    zero = weight_reduce_loss(empty * 2, None, "mean")
    assert zero.item() == 0.0 and zero.requires_grad
