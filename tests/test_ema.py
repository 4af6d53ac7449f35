"""Tests of detutils.engine.ema: the exponential moving average of the weights."""

import math

import pytest
import torch
from torch import nn

from detutils.engine.ema import ModelEMA


def test_ema_moves_by_the_ramped_decay():
    model = nn.BatchNorm1d(1)
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    with torch.no_grad():
        model.weight.fill_(3.0)  # the average starts at the initial weight 1
    model.num_batches_tracked.fill_(7)
    ema.update(model)
    decay = 0.9 * (1 - math.exp(-1 / 2.0))  # update 1: d_1 = 0.9 (1 - e^(-1/2)) = 0.354
    assert ema.decay_at(1) == pytest.approx(decay)
    assert ema.model.weight.item() == pytest.approx(decay * 1.0 + (1 - decay) * 3.0)
    assert ema.model.num_batches_tracked.item() == 7  # integer buffers are copied
    assert not any(p.requires_grad for p in ema.model.parameters())
    restored = ModelEMA(nn.BatchNorm1d(1))
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and restored.model.weight.item() == ema.model.weight.item()
