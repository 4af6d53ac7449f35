"""Darknet ``.cfg`` files: read them, and build the network they describe.

A Darknet cfg lists a network as ``[section]`` blocks of ``key=value`` lines. The first
block, ``[net]``, holds the input settings (``channels``, ``width``, ``height``); every
later block is one layer, numbered from 0 in file order. Six layer types build YOLOv3
and YOLOv3-tiny:

    [convolutional]  conv, then batch norm when ``batch_normalize=1`` (the conv then has
                     no bias), then leaky ReLU (slope 0.1) or nothing (``linear``)
    [shortcut]       ``from=-3``: add the output of the layer 3 back to the previous output
                     (a residual connection)
    [route]          ``layers=-1, 61``: concatenate outputs of earlier layers along the
                     channels; negative numbers count back from this layer, positive ones
                     are layer numbers. One entry just forwards that layer's output.
    [upsample]       ``stride=2``: nearest-neighbour upsampling
    [maxpool]        ``size``, ``stride``; size 2 with stride 1 pads one zero row and column
                     on the right and bottom first, so the map keeps its size (YOLOv3-tiny)
    [yolo]           a detection head: reshapes the previous conv's ``K (5 + C)`` channels
                     to ``(B, K, H, W, 5 + C)``; ``mask`` picks its K anchors among ``anchors``

Which layer outputs must be kept. A plain chain of layers only ever reads the previous
output. Routes and shortcuts also read older outputs, so those must be kept until read.
The builder works this out once, from the cfg: ``Darknet.keep`` holds the numbers of the
layers whose output a later route or shortcut reads (other than the layer right before
it, which is the running ``x`` anyway), and ``Darknet.release_after`` says after which
layer each kept output is read for the last time. ``forward`` keeps exactly those and
lets each go after its last reader. In YOLOv3, 27 of 107 layer outputs are ever kept:
23 for the residual shortcuts (each reads the output from 3 layers back) and 4 for the
routes of the two upsampling paths (layers 36, 61, 79 and 91). In YOLOv3-tiny, 2 of 24
(layers 8 and 13).

The layer before a ``[yolo]`` block must be a convolution with ``K (5 + C)`` filters, no
batch norm and a linear activation: its outputs are raw logits and box offsets.
``num_classes`` rewrites ``classes=`` of every ``[yolo]`` block and ``filters=`` of the
conv before it, so one cfg serves any class count.

Reference: ultralytics/yolov3 (archive branch) ``utils/parse_config.py``
``parse_model_cfg`` and ``models.py`` ``create_modules``, ``Darknet.forward_once``
(batch norm with momentum 0.03 and eps 1e-4, as there); Darknet's ``parser.c``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from detutils.coders import decode_yolo

__all__ = [
    "CfgBlock",
    "Darknet",
    "LayerSpec",
    "YOLOLayer",
    "parse_darknet_cfg",
    "read_darknet_cfg",
]

LAYER_KINDS = ("convolutional", "shortcut", "route", "upsample", "maxpool", "yolo")

# Keys each layer type understands. Darknet's training-only keys of [yolo] are accepted
# and not used.
_YOLO_TRAINING_KEYS = {"num", "jitter", "ignore_thresh", "truth_thresh", "random"}
_KNOWN_KEYS = {
    "convolutional": {"batch_normalize", "filters", "size", "stride", "pad", "activation"},
    "shortcut": {"from", "activation"},
    "route": {"layers"},
    "upsample": {"stride"},
    "maxpool": {"size", "stride"},
    "yolo": {"mask", "anchors", "classes"} | _YOLO_TRAINING_KEYS,
}


@dataclass(frozen=True)
class CfgBlock:
    """One ``[section]`` of a Darknet cfg."""

    kind: str  # section name: "net", "convolutional", "route", ...
    options: dict[str, str]  # key -> value, both stripped, as written
    line: int  # 1-based line number of the "[section]" header
    source: str = "<cfg>"  # file name, for error messages

    def where(self) -> str:
        return f"{self.source}, line {self.line} [{self.kind}]"

    def get(self, key: str, default: str | None = None) -> str:
        if key in self.options:
            return self.options[key]
        if default is None:
            raise ValueError(f"{self.where()}: missing '{key}='")
        return default

    def get_int(self, key: str, default: int | None = None) -> int:
        text = self.get(key, None if default is None else str(default))
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{self.where()}: {key}={text!r} is not an integer") from None

    def get_ints(self, key: str) -> list[int]:
        text = self.get(key)
        try:
            return [int(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise ValueError(f"{self.where()}: {key}={text!r} is not a list of integers") from None

    def get_floats(self, key: str) -> list[float]:
        text = self.get(key)
        try:
            return [float(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise ValueError(f"{self.where()}: {key}={text!r} is not a list of numbers") from None


def parse_darknet_cfg(text: str, source: str = "<cfg>") -> list[CfgBlock]:
    """Split the text of a Darknet cfg into blocks.

    Blank lines and comments (from ``#`` or ``;`` to the end of the line) are skipped.

    Args:
        text: the cfg file's contents.
        source: a name for error messages (the file name).

    Returns:
        the blocks in file order; the first is ``[net]`` (or ``[network]``).

    Raises:
        ValueError: naming the line, for a line that is neither ``[section]`` nor
            ``key=value``, an option before the first section, a repeated key, or a
            file that does not start with ``[net]``.

    Reference: ultralytics/yolov3 (archive) ``utils/parse_config.py`` ``parse_model_cfg``.
    """
    blocks: list[CfgBlock] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise ValueError(f"{source}, line {number}: malformed section header {line!r}")
            blocks.append(CfgBlock(line[1:-1].strip().lower(), {}, number, source))
            continue
        if "=" not in line:
            raise ValueError(f"{source}, line {number}: expected 'key=value', got {line!r}")
        if not blocks:
            raise ValueError(f"{source}, line {number}: option {line!r} before any [section]")
        key, value = (part.strip() for part in line.split("=", 1))
        if key in blocks[-1].options:
            raise ValueError(f"{source}, line {number}: '{key}' given twice in one block")
        blocks[-1].options[key] = value
    if not blocks or blocks[0].kind not in ("net", "network"):
        raise ValueError(f"{source}: a Darknet cfg starts with a [net] block")
    return blocks


def read_darknet_cfg(path: str | Path) -> list[CfgBlock]:
    """Read and parse a Darknet cfg file (see :func:`parse_darknet_cfg`)."""
    path = Path(path)
    return parse_darknet_cfg(path.read_text(encoding="utf-8"), source=path.name)


class LayerSpec(NamedTuple):
    """What the builder knows about one layer, from the cfg alone."""

    kind: str  # one of LAYER_KINDS
    sources: tuple[int, ...]  # layer numbers a route or shortcut reads; () for the others
    channels: int  # channels of the layer's output
    stride: int  # input pixels per output cell
    line: int  # line of the block in the cfg


class YOLOLayer(nn.Module):
    """A YOLOv3 detection head: reshape a conv output, and decode it into pixel boxes.

    The conv before it emits ``K (5 + C)`` channels per cell: for each of the K anchors,
    t_x, t_y, t_w, t_h, an objectness logit and C class logits.

    Attributes:
        anchors: (K, 2) anchor width and height, pixels (a buffer: it follows ``.to``).
        stride: input pixels per cell of this head.
        num_classes: C.
    """

    def __init__(self, anchors: Tensor, num_classes: int, stride: int) -> None:
        super().__init__()
        self.register_buffer("anchors", anchors.float().reshape(-1, 2), persistent=False)
        self.num_anchors = self.anchors.shape[0]
        self.num_classes = num_classes
        self.stride = stride

    @property
    def anchor_vec(self) -> Tensor:
        """(K, 2) anchor sizes in cells of this head (pixels / stride), the reference's name."""
        return self.anchors / self.stride

    def forward(self, features: Tensor) -> Tensor:
        """(B, K (5 + C), H, W) conv output -> (B, K, H, W, 5 + C) raw predictions."""
        batch, _, height, width = features.shape
        raw = features.view(batch, self.num_anchors, 5 + self.num_classes, height, width)
        return raw.permute(0, 1, 3, 4, 2).contiguous()  # (B, K, H, W, 5 + C)

    def decode(self, raw: Tensor) -> Tensor:
        """Raw predictions -> boxes in pixels, objectness and class probabilities.

        box centre = (sigmoid(t_xy) + cell) * stride, size = exp(t_wh) * anchor (which is
        ``exp(t_wh) * anchor_vec * stride``); objectness and classes through a sigmoid.
        With one class its probability is set to 1, as in the reference (a one-class
        model learns no class, so its score is the objectness alone).

        Args:
            raw: (B, K, H, W, 5 + C) from :meth:`forward`.

        Returns:
            (B, K H W, 5 + C): x1, y1, x2, y2 in pixels (the reference stores cx, cy, w, h
            here; the course uses xyxy), objectness, C class probabilities. Rows run
            anchor by anchor, each anchor row-major (y, then x).

        Reference: ultralytics/yolov3 (archive) ``models.py`` ``YOLOLayer.forward``,
        inference branch.
        """
        batch, num_anchors, height, width, channels = raw.shape
        ys = torch.arange(height, device=raw.device, dtype=raw.dtype)
        xs = torch.arange(width, device=raw.device, dtype=raw.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
        grid_xy = torch.stack([grid_x, grid_y], dim=-1)  # (H, W, 2): column x, row y
        anchor_wh = self.anchors.to(raw.dtype).view(num_anchors, 1, 1, 2)  # (A, 1, 1, 2)
        boxes = decode_yolo(raw, grid_xy, anchor_wh, self.stride)  # (B, K, H, W, 4)
        scores = raw[..., 4:].sigmoid()  # (B, K, H, W, 1 + C)
        if self.num_classes == 1:
            scores = torch.cat([scores[..., :1], torch.ones_like(scores[..., 1:])], dim=-1)
        decoded = torch.cat([boxes, scores], dim=-1)  # (B, K, H, W, 5 + C)
        return decoded.view(batch, -1, channels)  # (B, K H W, 5 + C)


def _with_num_classes(blocks: Sequence[CfgBlock], num_classes: int) -> list[CfgBlock]:
    """Blocks with ``classes=C`` in every [yolo] and ``filters=K (5 + C)`` in the conv before."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    blocks = list(blocks)
    for index, block in enumerate(blocks):
        if block.kind != "yolo":
            continue
        previous = blocks[index - 1] if index > 0 else block
        if previous.kind != "convolutional":
            raise ValueError(f"{block.where()}: the layer before a [yolo] must be convolutional")
        num_anchors = len(block.get_ints("mask"))
        blocks[index] = replace(block, options={**block.options, "classes": str(num_classes)})
        filters = str(num_anchors * (5 + num_classes))
        blocks[index - 1] = replace(previous, options={**previous.options, "filters": filters})
    return blocks


def _absolute(block: CfgBlock, index: int, reference: int) -> int:
    """Layer number that ``reference`` (relative if negative) points at, from layer ``index``."""
    target = index + reference if reference < 0 else reference
    if not 0 <= target < index:
        raise ValueError(
            f"{block.where()}: layer {index} refers to layer {reference} (= {target}), but "
            f"only layers 0 to {index - 1} come before it"
        )
    return target


def _convolutional(block: CfgBlock, in_channels: int, stride: int) -> tuple[nn.Module, int, int]:
    filters = block.get_int("filters")
    size = block.get_int("size")
    conv_stride = block.get_int("stride", 1)
    if filters < 1 or size < 1 or conv_stride < 1:
        raise ValueError(f"{block.where()}: filters, size and stride must be positive")
    batch_norm = block.get_int("batch_normalize", 0) == 1
    padding = size // 2 if block.get_int("pad", 0) else 0
    layer = nn.Sequential()
    layer.add_module(
        "conv", nn.Conv2d(in_channels, filters, size, conv_stride, padding, bias=not batch_norm)
    )
    if batch_norm:
        layer.add_module("bn", nn.BatchNorm2d(filters, momentum=0.03, eps=1e-4))
    activation = block.get("activation", "linear")
    if activation == "leaky":
        layer.add_module("act", nn.LeakyReLU(0.1))
    elif activation != "linear":
        raise ValueError(f"{block.where()}: activation {activation!r} is not supported")
    return layer, filters, stride * conv_stride


def _maxpool(block: CfgBlock, stride: int) -> tuple[nn.Module, int]:
    size, pool_stride = block.get_int("size"), block.get_int("stride", 1)
    if size < 1 or pool_stride < 1:
        raise ValueError(f"{block.where()}: size and stride must be positive")
    if size == 2 and pool_stride == 1:  # pad right and bottom: the map keeps its size
        return nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, 1)), stride
    return nn.MaxPool2d(size, pool_stride, padding=(size - 1) // 2), stride * pool_stride


def _yolo(block: CfgBlock, previous: LayerSpec | None, stride: int) -> YOLOLayer:
    values = block.get_floats("anchors")
    if not values or len(values) % 2 or min(values) <= 0:
        raise ValueError(f"{block.where()}: anchors must be positive width,height pairs")
    anchors = torch.tensor(values).view(-1, 2)  # (all anchors, 2)
    mask = block.get_ints("mask")
    if not mask or not all(0 <= index < len(anchors) for index in mask):
        raise ValueError(f"{block.where()}: mask={mask} must pick among {len(anchors)} anchors")
    num_classes = block.get_int("classes")
    if num_classes < 1:
        raise ValueError(f"{block.where()}: classes must be at least 1")
    expected = len(mask) * (5 + num_classes)
    if previous is None or previous.kind != "convolutional" or previous.channels != expected:
        raise ValueError(
            f"{block.where()}: the layer before must be convolutional with filters="
            f"{len(mask)} * (5 + {num_classes}) = {expected}"
        )
    return YOLOLayer(anchors[mask], num_classes, stride)


class Darknet(nn.Module):
    """The network of a Darknet cfg: a list of layers run in order.

    Args:
        blocks: parsed cfg, ``[net]`` first (:func:`parse_darknet_cfg`).
        num_classes: C for every [yolo] head (rewrites the cfg), or None to keep the cfg's.

    Attributes:
        layers: one module per cfg layer (routes and shortcuts hold no module: Identity).
        specs: one :class:`LayerSpec` per layer.
        keep: numbers of the layers whose output a later route or shortcut reads.
        release_after: layer number -> kept outputs read for the last time by that layer.
        heads: the [yolo] layers, in cfg order.
    """

    def __init__(self, blocks: Sequence[CfgBlock], num_classes: int | None = None) -> None:
        super().__init__()
        if not blocks or blocks[0].kind not in ("net", "network"):
            raise ValueError("a Darknet cfg starts with a [net] block")
        layer_blocks = list(blocks[1:])
        if num_classes is not None:
            layer_blocks = _with_num_classes(layer_blocks, num_classes)
        channels, stride = blocks[0].get_int("channels", 3), 1  # of the running output
        self.in_channels = channels
        self.layers = nn.ModuleList()
        self.specs: list[LayerSpec] = []
        for index, block in enumerate(layer_blocks):
            unknown = set(block.options) - _KNOWN_KEYS.get(block.kind, set())
            if block.kind not in LAYER_KINDS:
                raise ValueError(
                    f"{block.where()}: unknown layer type [{block.kind}]; supported: "
                    + ", ".join(LAYER_KINDS)
                )
            if unknown:
                raise ValueError(f"{block.where()}: unsupported keys {sorted(unknown)}")
            sources: tuple[int, ...] = ()
            layer: nn.Module = nn.Identity()
            if block.kind == "convolutional":
                layer, channels, stride = _convolutional(block, channels, stride)
            elif block.kind == "maxpool":
                layer, stride = _maxpool(block, stride)
            elif block.kind == "upsample":
                factor = block.get_int("stride", 2)
                if factor < 1 or stride % factor:
                    raise ValueError(
                        f"{block.where()}: cannot upsample stride {stride} by {factor}"
                    )
                layer, stride = nn.Upsample(scale_factor=factor, mode="nearest"), stride // factor
            elif block.kind == "route":
                sources = tuple(_absolute(block, index, ref) for ref in block.get_ints("layers"))
                if not sources:
                    raise ValueError(f"{block.where()}: layers= is empty")
                source_strides = {self.specs[source].stride for source in sources}
                if len(source_strides) > 1:
                    raise ValueError(
                        f"{block.where()}: cannot concatenate outputs of different strides "
                        f"{sorted(source_strides)}"
                    )
                channels = sum(self.specs[source].channels for source in sources)
                stride = source_strides.pop()
            elif block.kind == "shortcut":
                sources = (index - 1, _absolute(block, index, block.get_int("from")))
                partner = self.specs[sources[1]]
                if block.get("activation", "linear") != "linear":
                    raise ValueError(f"{block.where()}: only activation=linear is supported")
                if (partner.channels, partner.stride) != (channels, stride):
                    raise ValueError(
                        f"{block.where()}: cannot add layer {sources[1]} ({partner.channels} "
                        f"channels, stride {partner.stride}) to layer {index - 1} ({channels} "
                        f"channels, stride {stride})"
                    )
            elif block.kind == "yolo":
                # A head passes its input on unchanged: a later route may read it.
                layer = _yolo(block, self.specs[-1] if self.specs else None, stride)
            self.layers.append(layer)
            self.specs.append(LayerSpec(block.kind, sources, channels, stride, block.line))

        # Which outputs to keep, and until when. The layer right before a reader is the
        # running x, so it needs no keeping.
        last_reader: dict[int, int] = {}
        for index, spec in enumerate(self.specs):
            for source in spec.sources:
                if source != index - 1:
                    last_reader[source] = index
        self.keep = frozenset(last_reader)
        self.release_after: dict[int, tuple[int, ...]] = {}
        for source, reader in sorted(last_reader.items()):
            self.release_after[reader] = (*self.release_after.get(reader, ()), source)
        self.head_indices = [i for i, spec in enumerate(self.specs) if spec.kind == "yolo"]
        if not self.head_indices:
            raise ValueError(f"{blocks[0].source}: the cfg has no [yolo] layer")
        self.max_stride = max(spec.stride for spec in self.specs)

    @property
    def heads(self) -> list[YOLOLayer]:
        return [self.layers[index] for index in self.head_indices]

    def forward(self, images: Tensor) -> list[Tensor]:
        """Run every layer in cfg order.

        Args:
            images: (B, channels, H, W), H and W multiples of the largest stride (32).

        Returns:
            one raw tensor per [yolo] head, in cfg order: (B, K, H / s, W / s, 5 + C).
        """
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"images must be (B, {self.in_channels}, H, W), got {tuple(images.shape)}"
            )
        height, width = images.shape[-2:]
        if height % self.max_stride or width % self.max_stride:
            raise ValueError(
                f"image size {height} x {width} must be a multiple of the stride {self.max_stride}"
            )
        x = images
        kept: dict[int, Tensor] = {}  # outputs that a later route or shortcut reads
        head_outputs = []
        for index, (spec, layer) in enumerate(zip(self.specs, self.layers, strict=True)):
            if spec.kind == "route":
                inputs = [x if source == index - 1 else kept[source] for source in spec.sources]
                x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)
            elif spec.kind == "shortcut":
                x = x + kept[spec.sources[1]] if spec.sources[1] != index - 1 else x + x
            elif spec.kind == "yolo":
                head_outputs.append(layer(x))  # x itself goes on unchanged
            else:
                x = layer(x)
            if index in self.keep:
                kept[index] = x
            for source in self.release_after.get(index, ()):
                del kept[source]
        return head_outputs
