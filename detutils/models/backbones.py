"""Backbones: the networks that turn an image into feature maps at several strides.

ShuffleNetV2 (Ma et al., ECCV 2018), NanoDet's backbone, is built from torchvision's
``ShuffleNetV2`` and its ``InvertedResidual`` blocks (no pretrained weights are loaded
here). A stride-2 3x3 conv and a 3x3 max-pool bring the image to stride 4; three stages
of blocks (4, 8 and 4 blocks, the first of each halving the resolution) give the maps
of strides 8, 16 and 32 that the neck reads. torchvision's final 1x1 conv and
classifier are left out, as in NanoDet (``with_last_conv=False``).

Two things follow NanoDet rather than torchvision: every ReLU becomes a LeakyReLU of
slope 0.1 (``activation: LeakyReLU`` in NanoDet-m's config), and the weights start as
NanoDet initialises them when no pretrained weights are loaded: conv weights normal
with standard deviation 1 / (input channels per group), batch-norm scales 1 and shifts
0.0001.

Reference: torchvision ``models/shufflenetv2.py``; NanoDet
``nanodet/model/backbone/shufflenetv2.py``.
"""

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.shufflenetv2 import ShuffleNetV2

__all__ = ["SHUFFLENETV2_CHANNELS", "ShuffleNetV2Backbone"]

# Output channels of the stem and of stages 2, 3, 4, per width multiplier.
SHUFFLENETV2_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "0.5x": (24, 48, 96, 192),
    "1.0x": (24, 116, 232, 464),
    "1.5x": (24, 176, 352, 704),
    "2.0x": (24, 244, 488, 976),
}


def _replace_relu(module: nn.Module, negative_slope: float) -> None:
    """Swap every ``nn.ReLU`` inside ``module`` for a LeakyReLU of slope ``negative_slope``."""
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, nn.LeakyReLU(negative_slope, inplace=True))
        else:
            _replace_relu(child, negative_slope)


class ShuffleNetV2Backbone(nn.Module):
    """ShuffleNetV2 stages 2, 3 and 4: three feature maps at strides 8, 16 and 32.

    Args:
        stage_channels: output channels of the stem and of stages 2, 3, 4
            (``SHUFFLENETV2_CHANNELS["1.0x"]`` = 24, 116, 232, 464 for NanoDet-m).
        stage_repeats: blocks in stages 2, 3, 4.
        negative_slope: LeakyReLU slope of every activation; 0 keeps torchvision's ReLU.
    """

    strides = (8, 16, 32)

    def __init__(
        self,
        stage_channels: Sequence[int] = SHUFFLENETV2_CHANNELS["1.0x"],
        stage_repeats: Sequence[int] = (4, 8, 4),
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        if len(stage_channels) != 4 or len(stage_repeats) != 3:
            raise ValueError(
                "stage_channels needs 4 entries (stem, stages 2-4) and stage_repeats 3, got "
                f"{list(stage_channels)} and {list(stage_repeats)}"
            )
        # torchvision also builds the last 1x1 conv (its 5th channel count) and the
        # classifier; only the stem and the three stages are kept.
        network = ShuffleNetV2(list(stage_repeats), [*stage_channels, 1024])
        self.conv1, self.maxpool = network.conv1, network.maxpool
        self.stage2, self.stage3, self.stage4 = network.stage2, network.stage3, network.stage4
        self.out_channels = tuple(stage_channels[1:])
        if negative_slope != 0:
            _replace_relu(self, negative_slope)
        self._init_weights()

    def _init_weights(self) -> None:
        """NanoDet's initialisation without pretrained weights (see the module docstring)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 1.0 / module.weight.shape[1])
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.constant_(module.bias, 0.0001)

    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> maps of stages 2, 3, 4: (B, C_l, H / s, W / s), s = 8, 16, 32."""
        x = self.maxpool(self.conv1(images))  # (B, C1, H / 4, W / 4)
        stage2 = self.stage2(x)
        stage3 = self.stage3(stage2)
        stage4 = self.stage4(stage3)
        return [stage2, stage3, stage4]
