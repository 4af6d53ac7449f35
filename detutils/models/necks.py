"""Necks: mix the backbone's feature maps across levels before the heads read them.

Two necks: ``PAN`` (NanoDet, below) and ``FPN`` (ATSS and the later detectors: lateral
1x1 convs, a top-down pathway, 3x3 output convs and extra stride-2 levels; see its
docstring).

NanoDet's PAN (path aggregation network, Liu et al., CVPR 2018) in its lightest form:

1. a 1x1 conv per level (with bias, no norm, no activation) brings every map to the
   same number of channels;
2. top-down: from the coarsest level down, each map adds its coarser neighbour
   upsampled x2 (bilinear), so fine maps learn what the coarse ones see;
3. bottom-up: from the finest level up, each map adds its (already mixed) finer
   neighbour downsampled x0.5 (bilinear), so coarse maps get the fine detail back.

No 3x3 conv follows the sums (NanoDet-m has none), so the neck has only the 1x1
convs' weights. The resampling uses ``scale_factor`` as the reference does, so each
map must be exactly twice the size of the next: an input side that is a multiple of
the largest stride.

Reference: NanoDet ``nanodet/model/fpn/pan.py`` and ``fpn.py`` (weights initialised
Xavier-uniform, biases 0).
"""

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN", "PAN"]


class PAN(nn.Module):
    """Top-down then bottom-up sums of 1x1-projected feature maps.

    Args:
        in_channels: channels of each input map, finest first (116, 232, 464).
        out_channels: channels of every output map (96 in NanoDet-m).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        if len(in_channels) < 1 or out_channels < 1:
            raise ValueError(
                f"PAN needs input channels per level and out_channels >= 1, got "
                f"{list(in_channels)} and {out_channels}"
            )
        self.in_channels, self.out_channels = tuple(in_channels), out_channels
        self.lateral_convs = nn.ModuleList(
            nn.Conv2d(channels, out_channels, kernel_size=1) for channels in in_channels
        )
        for conv in self.lateral_convs:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """L maps (B, in_channels[l], H_l, W_l), finest first -> L maps (B, out, H_l, W_l)."""
        if len(features) != len(self.lateral_convs):
            raise ValueError(f"PAN expects {len(self.lateral_convs)} maps, got {len(features)}")
        # 1. Project every level to out_channels.
        maps = [conv(x) for conv, x in zip(self.lateral_convs, features, strict=True)]
        # 2. Top-down: coarse to fine.
        for level in range(len(maps) - 1, 0, -1):
            upsampled = F.interpolate(maps[level], scale_factor=2, mode="bilinear")
            maps[level - 1] = maps[level - 1] + upsampled
        # 3. Bottom-up: fine to coarse.
        for level in range(len(maps) - 1):
            downsampled = F.interpolate(maps[level], scale_factor=0.5, mode="bilinear")
            maps[level + 1] = maps[level + 1] + downsampled
        return maps


class FPN(nn.Module):
    """Feature pyramid network: lateral 1x1 convs, a top-down pathway, 3x3 output convs.

    mmdet's ``FPN`` with ``add_extra_convs="on_output"`` (RetinaNet, FCOS, ATSS):

    1. a 1x1 conv (with bias, no norm, no activation) brings each input map to
       ``out_channels``: the laterals;
    2. top-down, from the coarsest: each lateral adds its coarser neighbour upsampled
       to its size, nearest neighbour;
    3. a 3x3 conv on each sum gives the outputs P3, P4, P5 (for inputs C3, C4, C5);
    4. ``num_outs - len(in_channels)`` extra levels, each a stride-2 3x3 conv on the
       previous output (P6 from P5, P7 from P6), with no activation between them (mmdet's
       ``relu_before_extra_convs=False``, ATSS's setting); or, with ``extra="maxpool"``
       (mmdet's ``add_extra_convs=False``, Faster R-CNN's P6), a max-pool of kernel 1
       and stride 2 of the previous output: every other pixel, no weights.

    Convs are initialised Xavier-uniform with zero biases, as mmdet does.

    Args:
        in_channels: channels of each input map, finest first (512, 1024, 2048 for
            ResNet-50's C3 to C5).
        out_channels: channels of every output map (256).
        num_outs: output levels, at least ``len(in_channels)`` (5: P3 to P7).
        extra: how the extra levels are made, ``"conv"`` or ``"maxpool"``.

    Reference: mmdet ``mmdet/models/necks/fpn.py``; Lin et al., "Feature Pyramid
        Networks for Object Detection", CVPR 2017.
    """

    def __init__(
        self, in_channels: Sequence[int], out_channels: int, num_outs: int, extra: str = "conv"
    ) -> None:
        super().__init__()
        if extra not in ("conv", "maxpool"):
            raise ValueError(f"extra must be 'conv' or 'maxpool', got {extra!r}")
        if len(in_channels) < 1 or out_channels < 1 or num_outs < len(in_channels):
            raise ValueError(
                f"FPN needs input channels per level, out_channels >= 1 and num_outs >= "
                f"{len(in_channels)}, got {list(in_channels)}, {out_channels}, {num_outs}"
            )
        self.in_channels, self.out_channels = tuple(in_channels), out_channels
        self.num_outs, self.extra = num_outs, extra
        self.lateral_convs = nn.ModuleList(
            nn.Conv2d(channels, out_channels, kernel_size=1) for channels in in_channels
        )
        self.fpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1) for _ in in_channels
        )
        self.extra_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=2, padding=1)
            for _ in range(num_outs - len(in_channels) if extra == "conv" else 0)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """L maps (B, in_channels[l], H_l, W_l), finest first -> ``num_outs`` maps
        (B, out_channels, H_l, W_l), the extra ones each half the size of the one before
        (rounded up)."""
        if len(features) != len(self.lateral_convs):
            raise ValueError(f"FPN expects {len(self.lateral_convs)} maps, got {len(features)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features, strict=True)]
        for level in range(len(laterals) - 1, 0, -1):
            upsampled = F.interpolate(
                laterals[level], size=laterals[level - 1].shape[-2:], mode="nearest"
            )
            laterals[level - 1] = laterals[level - 1] + upsampled
        outputs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]
        for conv in self.extra_convs:
            outputs.append(conv(outputs[-1]))
        while self.extra == "maxpool" and len(outputs) < self.num_outs:
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return outputs
