"""Tests of detutils.models.yolov8 and yolov8_blocks: sizes, layout, decoding, a few steps."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from detutils.coders import dfl_distances
from detutils.models.yolov8 import (
    YOLOV8_PRESETS,
    DFLIntegral,
    YOLOv8,
    YOLOv8Config,
    build_yolov8n,
    build_yolov8s,
)
from detutils.models.yolov8_blocks import SPPF, C2f, ConvBNSiLU, scale_channels, scale_depth
from detutils.priors import anchor_points


def count(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@pytest.mark.parametrize(
    ("build", "total"), [(build_yolov8n, 3_157_200), (build_yolov8s, 11_166_560)]
)
def test_official_parameter_counts(build, total):
    # ultralytics' summaries: 3157200 parameters, 3157184 gradients (the 16 frozen DFL bins)
    with torch.device("meta"):
        model = build()
    assert count(model) == total
    assert count(model, trainable_only=True) == total - 16


def test_scaling_rules():
    # yolov8.yaml: channels x width rounded up to 8, C2f depths x 0.33 rounded (at least 1)
    base = (64, 128, 256, 512, 1024)
    assert [scale_channels(c, 0.25, 1024) for c in base] == [16, 32, 64, 128, 256]
    assert [scale_channels(c, 0.50, 1024) for c in base] == [32, 64, 128, 256, 512]
    assert scale_channels(1024, 0.75, 768) == 576  # yolov8m caps 1024 at 768 first
    assert [scale_depth(n, 0.33) for n in (3, 6, 6, 3)] == [1, 2, 2, 1]  # 0.99, 1.98
    assert scale_depth(1, 0.33) == 1


def test_training_outputs_at_640_on_meta():
    # three levels, 80 x 80, 40 x 40 and 20 x 20 at 640 px: 8400 anchor points; 4 x 16 bins
    # and 80 classes: 144 channels. Eval: (B, 4 + 80, 8400) and the same maps.
    with torch.device("meta"):
        model = build_yolov8s()
        images = torch.empty(2, 3, 640, 640)
        maps = model(images)
        assert [tuple(x.shape) for x in maps] == [
            (2, 144, 80, 80),
            (2, 144, 40, 40),
            (2, 144, 20, 20),
        ]
        decoded, raw = model.eval()(images)
    assert decoded.shape == (2, 84, 8400) and len(raw) == 3


@pytest.fixture(scope="module")
def small_model() -> YOLOv8:
    torch.manual_seed(0)
    return build_yolov8n(num_classes=3)


def test_eval_decoding(small_model):
    model = small_model.eval()
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        decoded, maps = model(images)
    # 64 x 96 px: 8 x 12 + 4 x 6 + 2 x 3 = 126 anchor points, 4 + 3 rows
    assert decoded.shape == (2, 7, 126) and [x.shape[1] for x in maps] == [67, 67, 67]
    points, strides = anchor_points([(8, 12), (4, 6), (2, 3)], (8, 16, 32))
    flat = torch.cat([x.flatten(2) for x in maps], 2).transpose(1, 2)  # (B, A, 67)
    distances = dfl_distances(flat[..., :64]) * strides[:, None]  # box channels come first
    expected = torch.cat([points - distances[..., :2], points + distances[..., 2:]], -1)
    torch.testing.assert_close(decoded[:, :4].transpose(1, 2), expected)
    torch.testing.assert_close(decoded[:, 4:].transpose(1, 2), flat[..., 64:].sigmoid())
    # the frozen DFL projection equals the coder, in bins
    torch.testing.assert_close(model.dfl(flat[..., :64]), dfl_distances(flat[..., :64]))


def test_head_bias_init(small_model):
    # box branches end with bias 1; class biases log(5 / C / (640 / s)^2)
    for stride, box_branch, class_branch in zip(
        (8, 16, 32), small_model.head.box_branches, small_model.head.class_branches, strict=True
    ):
        assert box_branch[-1].bias.eq(1.0).all()
        expected = math.log(5 / 3 / (640 / stride) ** 2)
        torch.testing.assert_close(class_branch[-1].bias, torch.full((3,), expected))
    batch_norms = [m for m in small_model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.eps == 1e-3 and bn.momentum == 0.03 for bn in batch_norms)


def test_blocks():
    x = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    # C2f: 1x1 to 2 c = 8, two bottlenecks of c = 4, concatenation of 2 + 2 maps, 1x1 to 8
    block = C2f(8, 8, repeats=2, shortcut=True)
    assert block.merge_conv.conv.in_channels == 16 and block(x).shape == (1, 8, 16, 16)
    # SPPF's chained 5x5 pools equal parallel 5, 9 and 13 pools (SPP)
    sppf = SPPF(8, 8)
    reduced = sppf.reduce_conv(x)
    pool5 = sppf.pool(reduced)
    torch.testing.assert_close(sppf.pool(pool5), nn.MaxPool2d(9, 1, 4)(reduced))
    torch.testing.assert_close(sppf.pool(sppf.pool(pool5)), nn.MaxPool2d(13, 1, 6)(reduced))
    assert ConvBNSiLU(8, 16, 3, 2)(x).shape == (1, 16, 8, 8)


def test_dfl_integral():
    logits = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    dfl = DFLIntegral(16)
    assert not dfl.bins.requires_grad
    torch.testing.assert_close(dfl(logits), dfl_distances(logits))


def test_loss_and_predict_take_either_output(small_model):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    targets = [
        {"boxes": torch.tensor([[8.0, 10, 40, 50]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    small_model.eval()
    with torch.no_grad():
        eval_outputs = small_model(images)
        eval_losses = small_model.loss(eval_outputs, targets)
        train_losses = small_model.loss(eval_outputs[1], targets)
    assert set(eval_losses) == {"box", "cls", "dfl", "loss"}
    for name in eval_losses:
        assert torch.equal(eval_losses[name], train_losses[name])
    detections = small_model.predict(eval_outputs, score_thr=0.0, max_det=5)
    assert len(detections) == 2 and detections[0]["boxes"].shape == (5, 4)
    assert set(detections[0]) == {"boxes", "scores", "labels"}
    assert detections[0]["labels"].max() < 3


def test_a_few_adamw_steps_fit_one_image():
    torch.manual_seed(0)
    model = build_yolov8n(num_classes=2).train()
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    targets = [{"boxes": torch.tensor([[12.0, 8, 52, 40]]), "labels": torch.tensor([1])}]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(12):
        losses = model.loss(model(images), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({name: value.item() for name, value in losses.items()})
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["box"] < history[0]["box"]


def test_bad_inputs(small_model):
    with pytest.raises(ValueError, match="multiples of 32"):
        small_model(torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        small_model(torch.rand(1, 1, 64, 64))
    small_model.train()
    maps = small_model(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="targets for a batch"):
        small_model.loss(maps, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(ValueError, match="strides"):
        YOLOv8(YOLOv8Config(strides=(8, 16)))


def test_factories_copy_their_preset():
    model = build_yolov8n(num_classes=7)
    assert model.name == "yolov8n" and model.num_classes == 7
    assert model.config.width == 0.25 and build_yolov8s().config.width == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        YOLOV8_PRESETS["yolov8n"].topk = 3  # a preset cannot be changed in place
    with pytest.raises(TypeError):
        YOLOV8_PRESETS["yolov8x"] = YOLOV8_PRESETS["yolov8n"]  # nor the table
    assert YOLOV8_PRESETS["yolov8n"].topk == 10 and YOLOV8_PRESETS["yolov8n"].num_classes == 80


def test_boxes_in_xywh_by_mistake_are_named():
    # COCO's xywh boxes fed as xyxy: [40, 30, 20, 10] has x2 = 20 < x1 = 40.
    model = build_yolov8n(num_classes=3)
    outputs = model(torch.rand(2, 3, 64, 64))
    good = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([0])}
    xywh = {"boxes": torch.tensor([[40.0, 30.0, 20.0, 10.0]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match=r"^targets\[1\]: box 0 = \[40.0, 30.0, 20.0, 10.0\]"):
        model.loss(outputs, [good, xywh])
