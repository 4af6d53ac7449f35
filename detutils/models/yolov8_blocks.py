"""YOLOv8's building blocks, backbone and PAN-FPN neck.

Blocks:

    ConvBNSiLU  k x k conv (no bias, "same" padding), batch norm, SiLU: every conv of the
                network but the head's last ones
    Bottleneck  3x3 ConvBNSiLU twice, plus the input when ``shortcut`` (backbone only)
    C2f         1x1 conv to 2 c channels, split in two halves of c; n bottlenecks in a
                chain on the second half; the two halves and every bottleneck's output
                (2 + n maps of c channels) concatenated, then a 1x1 conv. Cheaper than
                YOLOv5's C3 at equal depth, with a gradient path from each bottleneck
    SPPF        1x1 conv to half the channels, three 5x5 stride-1 max-pools in a chain
                (receptive fields 5, 9, 13), the four maps concatenated, a 1x1 conv

The backbone (CSPDarknet with C2f) halves the resolution five times with stride-2 3x3
convs, each followed by a C2f; SPPF closes it. The neck is a PAN-FPN: top-down, P5 is
upsampled and joined to P4, then to P3 (each join a concatenation and a C2f); bottom-up,
stride-2 convs carry the result back down to P4 and P5. Its three outputs, at strides 8,
16 and 32, feed the detection head.

Scaling (``yolov8.yaml``): a size preset multiplies every channel count by ``width``
(after capping it at ``max_channels``) and rounds up to a multiple of 8, and every C2f's
number of bottlenecks by ``depth`` (rounded, at least 1). The base channels are 64, 128,
256, 512, 1024 and the base depths 3, 6, 6, 3 in the backbone and 3 in the neck.

Initialisation as ultralytics: PyTorch's default conv initialisation; batch norm with
``eps=1e-3`` and ``momentum=0.03`` (``initialize_weights``).

Reference: ultralytics ``ultralytics/nn/modules/conv.py`` (``Conv``), ``block.py``
(``Bottleneck``, ``C2f``, ``SPPF``), ``cfg/models/v8/yolov8.yaml``, ``nn/tasks.py``
(``parse_model``), ``utils/torch_utils.py`` (``initialize_weights``).
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "Bottleneck",
    "C2f",
    "ConvBNSiLU",
    "SPPF",
    "YOLOv8Backbone",
    "YOLOv8Neck",
    "scale_channels",
    "scale_depth",
]

BN_EPS, BN_MOMENTUM = 1e-3, 0.03  # ultralytics initialize_weights


def scale_channels(channels: int, width: float, max_channels: int) -> int:
    """Channels of a scaled layer: min(channels, max_channels) x width, up to a multiple of 8."""
    return int(math.ceil(min(channels, max_channels) * width / 8) * 8)


def scale_depth(repeats: int, depth: float) -> int:
    """Bottlenecks of a scaled C2f: round(repeats x depth), at least 1 (1 stays 1)."""
    return max(round(repeats * depth), 1) if repeats > 1 else repeats


class ConvBNSiLU(nn.Sequential):
    """k x k conv (stride s, padding k // 2, no bias), batch norm, SiLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU(inplace=True)


class Bottleneck(nn.Module):
    """Two 3x3 ConvBNSiLU at constant width; adds the input when ``shortcut``."""

    def __init__(self, channels: int, shortcut: bool) -> None:
        super().__init__()
        self.conv1 = ConvBNSiLU(channels, channels, 3)
        self.conv2 = ConvBNSiLU(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """CSP block with two convs and n bottlenecks whose outputs are all kept (see module)."""

    def __init__(self, in_channels: int, out_channels: int, repeats: int, shortcut: bool):
        super().__init__()
        self.hidden = out_channels // 2  # c: channels of each half and of each bottleneck
        # registered in the reference's order (cv1, cv2, m), so that state dicts line up
        self.split_conv = ConvBNSiLU(in_channels, 2 * self.hidden)
        self.merge_conv = ConvBNSiLU((2 + repeats) * self.hidden, out_channels)
        self.bottlenecks = nn.ModuleList(Bottleneck(self.hidden, shortcut) for _ in range(repeats))

    def forward(self, x: Tensor) -> Tensor:
        parts = list(self.split_conv(x).chunk(2, dim=1))  # 2 x (B, c, H, W)
        for bottleneck in self.bottlenecks:
            parts.append(bottleneck(parts[-1]))  # chained on the last map
        return self.merge_conv(torch.cat(parts, dim=1))  # (B, (2 + n) c, H, W) -> out


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools instead of three parallel ones."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.reduce_conv = ConvBNSiLU(in_channels, hidden)
        self.pool = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)
        self.merge_conv = ConvBNSiLU(4 * hidden, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce_conv(x)
        pooled1 = self.pool(x)  # receptive field 5
        pooled2 = self.pool(pooled1)  # 9
        pooled3 = self.pool(pooled2)  # 13
        return self.merge_conv(torch.cat([x, pooled1, pooled2, pooled3], dim=1))


class YOLOv8Backbone(nn.Module):
    """Stem and four stages, SPPF at the end: maps P3, P4, P5 at strides 8, 16, 32.

    Args:
        channels: the five scaled widths (base 64, 128, 256, 512, 1024).
        depths: the four scaled C2f depths (base 3, 6, 6, 3).
    """

    strides = (8, 16, 32)

    def __init__(self, channels: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = channels

        def stage(in_channels: int, out_channels: int, repeats: int) -> nn.Sequential:
            return nn.Sequential(
                ConvBNSiLU(in_channels, out_channels, 3, 2),
                C2f(out_channels, out_channels, repeats, shortcut=True),
            )

        self.stem = ConvBNSiLU(3, c1, 3, 2)  # stride 2
        self.stage2 = stage(c1, c2, depths[0])  # stride 4
        self.stage3 = stage(c2, c3, depths[1])  # stride 8: P3
        self.stage4 = stage(c3, c4, depths[2])  # stride 16: P4
        self.stage5 = stage(c4, c5, depths[3])  # stride 32
        self.sppf = SPPF(c5, c5)  # P5
        self.out_channels = (c3, c4, c5)

    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> [P3 (B, c3, H / 8, W / 8), P4 (B, c4, H / 16, W / 16), P5 (B, c5,
        H / 32, W / 32)]."""
        p3 = self.stage3(self.stage2(self.stem(images)))
        p4 = self.stage4(p3)
        p5 = self.sppf(self.stage5(p4))
        return [p3, p4, p5]


class YOLOv8Neck(nn.Module):
    """PAN-FPN: top-down from P5 to P3, then bottom-up back to P5; C2f without shortcut.

    Args:
        in_channels: channels of P3, P4, P5 (the backbone's ``out_channels``).
        repeats: bottlenecks of each C2f (base 3, scaled).
    """

    def __init__(self, in_channels: Sequence[int], repeats: int) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down4 = C2f(c5 + c4, c4, repeats, shortcut=False)  # up(P5) + P4
        self.top_down3 = C2f(c4 + c3, c3, repeats, shortcut=False)  # up(N4) + P3: out 3
        self.down3 = ConvBNSiLU(c3, c3, 3, 2)
        self.bottom_up4 = C2f(c3 + c4, c4, repeats, shortcut=False)  # down(out 3) + N4
        self.down4 = ConvBNSiLU(c4, c4, 3, 2)
        self.bottom_up5 = C2f(c4 + c5, c5, repeats, shortcut=False)  # down(out 4) + P5
        self.out_channels = (c3, c4, c5)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """[P3, P4, P5] -> three maps of the same sizes and channels, strides 8, 16, 32."""
        p3, p4, p5 = features
        n4 = self.top_down4(torch.cat([self.upsample(p5), p4], dim=1))  # (B, c4, H/16, W/16)
        out3 = self.top_down3(torch.cat([self.upsample(n4), p3], dim=1))  # (B, c3, H/8, W/8)
        out4 = self.bottom_up4(torch.cat([self.down3(out3), n4], dim=1))  # (B, c4, H/16, W/16)
        out5 = self.bottom_up5(torch.cat([self.down4(out4), p5], dim=1))  # (B, c5, H/32, W/32)
        return [out3, out4, out5]
