"""Shared pytest set-up: one torch thread (small tensor work is erratic with more)."""

import torch

torch.set_num_threads(1)
