"""Tests of detutils.models.darknet: cfg parsing, layer building, the forward pass, heads."""

import math

import pytest
import torch
import torch.nn.functional as F

from detutils.models.darknet import (
    Darknet,
    YOLOLayer,
    parse_darknet_cfg,
    read_darknet_cfg,
)
from detutils.models.yolov3 import CFG_DIR

# A small network that uses every layer type. Layer numbers and what they read:
#   0 conv 1x1 (2 -> 4 channels, bias, linear)   stride 1
#   1 maxpool 2/2                                  stride 2
#   2 upsample x2                                  stride 1
#   3 shortcut from=-3: output 2 + output 0        (reads 0: kept)
#   4 route -1, 0: concat(output 3, output 0)      8 channels (reads 0 again: its last reader)
#   5 conv 1x1 to 3 (5 + 1) = 18, linear           the head conv
#   6 yolo, 3 anchors, 1 class
SMALL_CFG = """
# a comment line
[net]
channels=2   ; an inline comment

[convolutional]
filters=4
size=1
stride=1
pad=1
activation=linear

[maxpool]
size=2
stride=2

[upsample]
stride=2

[shortcut]
from=-3
activation=linear

[route]
layers = -1, 0

[convolutional]
filters=18
size=1
stride=1
pad=1
activation=linear

[yolo]
mask = 0,1,2
anchors = 2,3,  4,5,  6,7
classes=1
num=3
jitter=.3
"""


def small_cfg_with(old: str, new: str) -> str:
    assert old in SMALL_CFG
    return SMALL_CFG.replace(old, new)


def test_parse_blocks_lines_and_comments():
    blocks = parse_darknet_cfg(SMALL_CFG, source="small.cfg")
    assert [block.kind for block in blocks] == [
        "net",
        "convolutional",
        "maxpool",
        "upsample",
        "shortcut",
        "route",
        "convolutional",
        "yolo",
    ]
    assert blocks[0].options == {"channels": "2"}  # the inline comment is gone
    assert blocks[0].line == 3 and blocks[1].line == 6  # 1-based header lines
    assert blocks[5].options["layers"] == "-1, 0"
    assert blocks[7].get_floats("anchors") == [2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[net]\nchannels 3\n", "line 2: expected 'key=value'"),
        ("channels=3\n[net]\n", "line 1: option 'channels=3' before any"),
        ("[net\nchannels=3\n", "line 1: malformed section header"),
        ("[net]\nchannels=3\nchannels=1\n", "line 3: 'channels' given twice"),
        ("[convolutional]\nfilters=3\n", "starts with a \\[net\\] block"),
        ("", "starts with a \\[net\\] block"),
    ],
)
def test_parse_errors_name_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_darknet_cfg(text, source="bad.cfg")


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[upsample]", "[dropout]", r"small.cfg, line 17 \[dropout\]: unknown layer type"),
        ("layers = -1, 0", "layers = -1, 5", r"line 24 \[route\]: layer 4 refers to layer 5"),
        ("layers = -1, 0", "layers = -9", r"line 24 \[route\]: layer 4 refers to layer -9"),
        ("from=-3", "from=4", r"line 20 \[shortcut\]: layer 3 refers to layer 4"),
        (
            "filters=18",
            "filters=17",
            r"line 34 \[yolo\]: the layer before .* filters=3 \* \(5 \+ 1\) = 18",
        ),
        ("activation=linear\n\n[maxpool]", "activation=mish\n\n[maxpool]", "'mish'"),
        ("stride=2\n\n[shortcut]", "stride=2\ngroups=2\n\n[shortcut]", r"\['groups'\]"),
        ("mask = 0,1,2", "mask = 0,1,5", "must pick among 3 anchors"),
        ("filters=4", "filters=four", "filters='four' is not an integer"),
    ],
)
def test_build_errors_name_the_line(old, new, message):
    with pytest.raises(ValueError, match=message):
        Darknet(parse_darknet_cfg(small_cfg_with(old, new), source="small.cfg"))


def test_shortcut_of_mismatched_shapes_is_rejected():
    # Layer 3 adds layer 1 (stride 2) to layer 2 (stride 1).
    text = small_cfg_with("from=-3", "from=-2")
    with pytest.raises(ValueError, match=r"cannot add layer 1 \(4 channels, stride 2\)"):
        Darknet(parse_darknet_cfg(text, source="small.cfg"))


def test_keep_bookkeeping_of_the_small_network():
    network = Darknet(parse_darknet_cfg(SMALL_CFG))
    assert network.keep == {0}  # only layer 0 is read by a later, non-adjacent layer
    assert network.release_after == {4: (0,)}  # the route is its last reader
    assert [spec.stride for spec in network.specs] == [1, 2, 1, 1, 1, 1, 1]
    assert [spec.channels for spec in network.specs] == [4, 4, 4, 4, 8, 18, 18]
    assert network.specs[4].sources == (3, 0)
    assert network.head_indices == [6] and network.max_stride == 2


def test_forward_equals_the_layers_by_hand():
    torch.manual_seed(0)
    network = Darknet(parse_darknet_cfg(SMALL_CFG))
    images = torch.randn(2, 2, 4, 6)
    (raw,) = network(images)
    conv0, conv5 = network.layers[0].conv, network.layers[5].conv
    out0 = conv0(images)
    out2 = F.interpolate(F.max_pool2d(out0, 2, 2), scale_factor=2, mode="nearest")
    out3 = out2 + out0
    out5 = conv5(torch.cat([out3, out0], dim=1))  # (2, 18, 4, 6)
    expected = out5.view(2, 3, 6, 4, 6).permute(0, 1, 3, 4, 2)  # (B, A, H, W, 5 + C)
    torch.testing.assert_close(raw, expected)
    assert raw.shape == (2, 3, 4, 6, 6)


def test_num_classes_rewrites_the_head():
    network = Darknet(parse_darknet_cfg(SMALL_CFG), num_classes=4)
    assert network.layers[5].conv.out_channels == 3 * (5 + 4)
    assert network.heads[0].num_classes == 4
    (raw,) = network(torch.zeros(1, 2, 2, 2))
    assert raw.shape == (1, 3, 2, 2, 9)
    with pytest.raises(ValueError, match="at least 1"):
        Darknet(parse_darknet_cfg(SMALL_CFG), num_classes=0)


def test_image_size_and_channels_are_checked():
    network = Darknet(parse_darknet_cfg(SMALL_CFG))
    with pytest.raises(ValueError, match="multiple of the stride 2"):
        network(torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        network(torch.zeros(1, 3, 4, 4))


def test_maxpool_size_2_stride_1_keeps_the_map_size():
    text = small_cfg_with(
        "[maxpool]\nsize=2\nstride=2\n\n[upsample]\nstride=2", "[maxpool]\nsize=2\nstride=1"
    )
    text = text.replace("from=-3", "from=-2")
    network = Darknet(parse_darknet_cfg(text))
    (raw,) = network(torch.randn(1, 2, 4, 4))
    assert raw.shape[2:4] == (4, 4)
    # Padding on the right and bottom only: output (y, x) is the max of input rows
    # y, y + 1 and columns x, x + 1 (zeros past the edge).
    features = torch.randn(1, 1, 3, 3)
    pooled = network.layers[1](features)
    padded = F.pad(features, (0, 1, 0, 1))
    torch.testing.assert_close(pooled, F.max_pool2d(padded, 2, 1))


@pytest.mark.parametrize(
    ("name", "parameters", "num_layers", "strides", "keep"),
    [
        ("yolov3.cfg", 61_949_149, 107, [32, 16, 8], {36, 61, 79, 91}),
        ("yolov3-tiny.cfg", 8_852_366, 24, [32, 16], {8, 13}),
    ],
)
def test_shipped_cfgs(name, parameters, num_layers, strides, keep):
    # Parameters counted on the meta device: no memory, no random initialisation.
    with torch.device("meta"):
        network = Darknet(read_darknet_cfg(CFG_DIR / name))
    assert sum(p.numel() for p in network.parameters()) == parameters
    assert len(network.specs) == num_layers
    assert [head.stride for head in network.heads] == strides
    assert keep <= network.keep
    for index in network.head_indices:  # head convs: 255 outputs, bias, no batch norm
        head_conv = network.layers[index - 1]
        assert head_conv.conv.out_channels == 255 and head_conv.conv.bias is not None
        assert not hasattr(head_conv, "bn")
    if name == "yolov3.cfg":
        assert len(network.keep) == 27  # 23 shortcut partners and 4 route sources


def test_yolo_layer_reshape_is_anchor_major():
    head = YOLOLayer(torch.tensor([[10.0, 13], [16, 30]]), num_classes=2, stride=8)
    features = torch.randn(2, 2 * 7, 3, 5)
    raw = head(features)
    assert raw.shape == (2, 2, 3, 5, 7)
    # raw[b, a, y, x, k] is channel a (5 + C) + k of the conv output.
    assert raw[1, 1, 2, 4, 3] == features[1, 1 * 7 + 3, 2, 4]
    torch.testing.assert_close(head.anchor_vec, torch.tensor([[1.25, 1.625], [2.0, 3.75]]))


def test_yolo_decode_by_hand():
    # Stride 8, anchors 10 x 13 and 16 x 30, 2 x 3 cells, 2 classes. At anchor 1, cell
    # (y 1, x 2): t = (0, ln 3 - ln 1 ... ) chosen so that sigmoid(t_x) = 0.5,
    # sigmoid(t_y) = 0.25, exp(t_w) = 2, exp(t_h) = 0.5: centre ((0.5 + 2) 8, (0.25 + 1) 8)
    # = (20, 10), size (32, 15): xyxy (4, 2.5, 36, 17.5). Objectness logit 0 -> 0.5;
    # class logits ln 3, -ln 3 -> 0.75, 0.25.
    head = YOLOLayer(torch.tensor([[10.0, 13], [16, 30]]), num_classes=2, stride=8)
    raw = torch.zeros(1, 2, 2, 3, 7)
    raw[0, 1, 1, 2] = torch.tensor(
        [0.0, math.log(1 / 3), math.log(2.0), math.log(0.5), 0.0, math.log(3.0), -math.log(3.0)]
    )
    decoded = head.decode(raw)
    assert decoded.shape == (1, 2 * 2 * 3, 7)
    row = 1 * (2 * 3) + 1 * 3 + 2  # anchor, then y, then x
    torch.testing.assert_close(decoded[0, row], torch.tensor([4.0, 2.5, 36, 17.5, 0.5, 0.75, 0.25]))
    # A zero output at anchor 0, cell (0, 0): centre (4, 4), size 10 x 13.
    torch.testing.assert_close(decoded[0, 0, :4], torch.tensor([-1.0, -2.5, 9.0, 10.5]))


def test_one_class_decode_sets_the_class_probability_to_one():
    head = YOLOLayer(torch.tensor([[10.0, 13]]), num_classes=1, stride=8)
    decoded = head.decode(torch.randn(2, 1, 2, 2, 6))
    assert (decoded[..., 5] == 1).all()
    assert ((decoded[..., 4] > 0) & (decoded[..., 4] < 1)).all()
