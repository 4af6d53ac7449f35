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

ResNet (He et al., CVPR 2016), the backbone of ATSS and the later detectors, is
torchvision's ``ResNet`` without its pooling and classifier (``ResNetBackbone``), at any
depth, optionally at a reduced width (the course's CPU presets), with mmdet's frozen
stages and fixed batch norms where the references use them.

Reference: torchvision ``models/shufflenetv2.py`` and ``models/resnet.py``; NanoDet
``nanodet/model/backbone/shufflenetv2.py``; mmdet ``mmdet/models/backbones/resnet.py``.
"""

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.shufflenetv2 import ShuffleNetV2

__all__ = [
    "CPU_PRESET_BACKBONE",
    "RESNET_STAGES",
    "SHUFFLENETV2_CHANNELS",
    "ResNetBackbone",
    "ShuffleNetV2Backbone",
]

# The backbone of the CPU presets of ATSS, Faster R-CNN and Deformable DETR, as config
# fields: a half-width ResNet-18 whose every stage trains (batch norms included), from the
# weights the course pre-trains on the shapes set (``detutils.engine.pretrain``), at 320 px.
CPU_PRESET_BACKBONE: dict[str, object] = {
    "img_size": 320,
    "depth": 18,
    "backbone_width": 32,
    "frozen_stages": -1,
    "norm_eval": False,
    "pretrained": "shapes-resnet18-half",
}

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


# ------------------------------------------------------------------------------- ResNet
# Blocks per stage, and the block, of each depth (He et al., CVPR 2016, table 1).
RESNET_STAGES: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its pooling and classifier: maps of stages 2 to 5.

    Stage 1 is the stem (a stride-2 7x7 conv and a 3x3 max-pool, stride 4); stages 2 to
    5 (torchvision's ``layer1`` to ``layer4``) give maps of strides 4, 8, 16 and 32. The
    detectors of the course read C3, C4 and C5 (strides 8, 16, 32), as mmdet's FPN does
    with ``start_level=1``; ``out_stages`` chooses. The network is torchvision's, built
    without weights (its own initialisation: Kaiming-normal convs, batch-norm scales 1);
    :meth:`load_weights` loads an ImageNet or a course-trained state dict.

    ``width`` scales every stage's channels (64 = torchvision's ResNet; 32 halves them,
    a quarter of the arithmetic), for the course's CPU presets.

    The reference detectors start from ImageNet weights and keep the stem and stage 2
    frozen with the batch-norm statistics fixed (mmdet: ``frozen_stages=1``,
    ``norm_eval=True``); ``frozen_stages`` and ``norm_eval`` do the same here.

    Args:
        depth: 18, 34, 50 or 101.
        out_stages: which of stages 2 to 5 to return, finest first.
        width: channels of stage 2's blocks (64 in every published ResNet).
        frozen_stages: mmdet's count: -1 freezes nothing, 0 the stem, n >= 1 the stem
            and the first n stages of blocks (1: stage 2, ``layer1``).
        norm_eval: keep the batch norms in eval mode (running statistics) while
            training.

    Reference: torchvision ``models/resnet.py``; mmdet ``ResNet`` (``style="pytorch"``:
        the stride of a bottleneck sits on its 3x3 conv, as in torchvision).
    """

    def __init__(
        self,
        depth: int = 50,
        out_stages: Sequence[int] = (3, 4, 5),
        width: int = 64,
        frozen_stages: int = -1,
        norm_eval: bool = False,
    ) -> None:
        super().__init__()
        if depth not in RESNET_STAGES:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_STAGES)}, got {depth}")
        if not out_stages or any(stage not in (2, 3, 4, 5) for stage in out_stages):
            raise ValueError(f"out_stages must be among 2, 3, 4, 5, got {list(out_stages)}")
        if width < 8 or width % 8:
            raise ValueError(f"width must be a multiple of 8 (64 for ResNet), got {width}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must lie in -1 .. 4, got {frozen_stages}")
        block, repeats = RESNET_STAGES[depth]
        self.depth, self.width = depth, width
        self.out_stages = tuple(out_stages)
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        network = ResNet(block, list(repeats))  # torchvision's, at width 64
        if width != 64:  # the same network with every stage's channels scaled
            network = _scaled_resnet(block, repeats, width)
        self.conv1, self.bn1, self.relu, self.maxpool = (
            network.conv1, network.bn1, network.relu, network.maxpool
        )  # fmt: skip
        self.layer1, self.layer2 = network.layer1, network.layer2
        self.layer3, self.layer4 = network.layer3, network.layer4
        channels = [width * 2**index * block.expansion for index in range(4)]  # stages 2-5
        self.out_channels = tuple(channels[stage - 2] for stage in self.out_stages)
        self.strides = tuple(2**stage for stage in self.out_stages)
        self._freeze()

    def _freeze(self) -> None:
        """No gradient, and eval mode, for the stem and the first ``frozen_stages`` stages."""
        frozen: list[nn.Module] = []
        if self.frozen_stages >= 0:
            frozen += [self.conv1, self.bn1]
        frozen += [getattr(self, f"layer{index}") for index in range(1, self.frozen_stages + 1)]
        for module in frozen:
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNetBackbone":
        """As ``nn.Module.train``, keeping frozen stages (and with ``norm_eval`` every batch
        norm) in eval mode."""
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def load_weights(self, state_dict: dict, source: str = "state dict") -> None:
        """Load a ResNet state dict (torchvision names; ``fc.*`` is ignored).

        Raises:
            ValueError: a missing or a misshaped weight, naming it and ``source``.
        """
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith("fc.")}
        own = self.state_dict()
        missing = sorted(set(own) - set(state_dict))
        if missing:
            raise ValueError(f"{source}: no weights for {missing[:3]} ({len(missing)} missing)")
        for key, value in own.items():
            if state_dict[key].shape != value.shape:
                raise ValueError(
                    f"{source}: {key} has shape {tuple(state_dict[key].shape)}, this "
                    f"ResNet-{self.depth} (width {self.width}) needs {tuple(value.shape)}"
                )
        self.load_state_dict({key: state_dict[key] for key in own})

    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> the maps of ``out_stages``: (B, C_s, H / 2^s, W / 2^s)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # stride 4
        maps = {}
        for stage in (2, 3, 4, 5):
            x = getattr(self, f"layer{stage - 1}")(x)
            maps[stage] = x
            if stage == max(self.out_stages):
                break
        return [maps[stage] for stage in self.out_stages]


def _scaled_resnet(block: type[nn.Module], repeats: Sequence[int], width: int) -> ResNet:
    """torchvision's ``ResNet`` with stages of width, 2 width, 4 width, 8 width channels.

    torchvision's constructor fixes the widths at 64 .. 512; this builds the same
    network and replaces its stem and stages by ones made with its own
    ``_make_layer`` at the new widths (weights initialised as torchvision does).
    """
    network = ResNet(block, list(repeats))
    network.inplanes = width
    network.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    network.bn1 = nn.BatchNorm2d(width)
    for index, count in enumerate(repeats):
        layer = network._make_layer(block, width * 2**index, count, stride=1 if index == 0 else 2)
        setattr(network, f"layer{index + 1}", layer)
    for module in network.modules():  # torchvision's initialisation
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return network
