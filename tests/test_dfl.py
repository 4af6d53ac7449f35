"""Tests of detutils.losses.dfl: distribution focal loss by hand, its minimum, bad targets."""

import math

import pytest
import torch

from detutils.coders import dfl_integral
from detutils.losses import distribution_focal_loss


def test_uniform_distribution_costs_log_bins():
    # eight equal logits: every bin has probability 1/8, so both cross-entropies are
    # ln 8 and the split weights (0.7, 0.3) sum to 1
    loss = distribution_focal_loss(torch.zeros(1, 8), torch.tensor([2.3]), reduction="none")
    torch.testing.assert_close(loss, torch.tensor([math.log(8.0)]))


def test_by_hand_with_known_probabilities():
    # probabilities 0.1, 0.2, 0.3, 0.4 over bins 0..3 (R = 3); target 1.25 lies between
    # bins 1 and 2 with weights 0.75 and 0.25: -(0.75 ln 0.2 + 0.25 ln 0.3)
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    loss = distribution_focal_loss(logits, torch.tensor([1.25]), reduction="none")
    torch.testing.assert_close(loss, torch.tensor([-(0.75 * math.log(0.2) + 0.25 * math.log(0.3))]))
    # an integer target puts all weight on its own bin: -ln 0.3
    loss = distribution_focal_loss(logits, torch.tensor([2.0]), reduction="none")
    torch.testing.assert_close(loss, torch.tensor([-math.log(0.3)]))


def test_minimum_is_the_two_bin_split_whose_mean_is_the_target():
    # The best distribution for y = 2.3 puts 0.7 on bin 2 and 0.3 on bin 3: its
    # expected value is 2.3, and any other distribution costs more.
    target = torch.tensor([2.3])
    best = torch.full((1, 8), 1e-9)
    best[0, 2], best[0, 3] = 0.7, 0.3
    best_logits = best.log()
    torch.testing.assert_close(dfl_integral(best_logits), target, atol=1e-6, rtol=0)
    best_loss = distribution_focal_loss(best_logits, target)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = best_logits + torch.randn(1, 8, generator=generator) * 0.3
        assert distribution_focal_loss(other, target) > best_loss


def test_weight_and_avg_factor():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 8, generator=generator)
    targets = torch.rand(6, generator=generator) * 6.9
    weight = torch.rand(6, generator=generator)
    per_row = distribution_focal_loss(logits, targets, reduction="none")
    mean = distribution_focal_loss(logits, targets, weight=weight, avg_factor=4.0)
    torch.testing.assert_close(mean, (per_row * weight).sum() / 4.0)
    torch.testing.assert_close(distribution_focal_loss(logits, targets), per_row.mean())


def test_empty_input_is_zero_with_gradient():
    logits = torch.zeros(0, 8, requires_grad=True)
    loss = distribution_focal_loss(logits, torch.zeros(0), avg_factor=4.0)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_targets_outside_the_bins_are_refused():
    logits = torch.zeros(2, 8)  # R = 7
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        distribution_focal_loss(logits, torch.tensor([1.0, 7.0]))  # 7 needs a bin 8
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        distribution_focal_loss(logits, torch.tensor([-0.5, 1.0]))
    with pytest.raises(ValueError, match="targets must be"):
        distribution_focal_loss(logits, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="R \\+ 1"):
        distribution_focal_loss(torch.zeros(2), torch.tensor([1.0, 1.0]))
