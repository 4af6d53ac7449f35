"""An exponential moving average (EMA) of a model's weights, evaluated instead of the model.

Late in training the weights jitter around a good point with every noisy step; their
running average sits nearer that point, so it usually scores higher than the last
weights, and most in short runs. The trainer keeps one when ``TrainSchedule.ema`` is set
and evaluates and returns it.
"""

import copy
import math
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """An exponential moving average of a model's weights.

    After update ``n`` the average moves towards the model by ``1 - d_n`` with
    ``d_n = decay * (1 - exp(-n / tau))``: the ramp lets the average follow the
    fast early changes, then smooths the late noise. Integer buffers are copied.

    Reference:
        ultralytics ``utils/torch_utils.py`` ``ModelEMA``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0) -> None:
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    def decay_at(self, updates: int) -> float:
        """The decay ``d_n`` used by update number ``updates``."""
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model`` (the unwrapped, non-DDP module)."""
        self.updates += 1
        decay = self.decay_at(self.updates)
        current = model.state_dict()
        for name, average in self.model.state_dict().items():
            if average.dtype.is_floating_point:
                average.mul_(decay).add_(current[name].detach(), alpha=1.0 - decay)
            else:
                average.copy_(current[name])

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
