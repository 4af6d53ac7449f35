"""Tests of detutils.models.yolov3: the detector's build, outputs, loss and predict."""

import math
from dataclasses import replace

import pytest
import torch

from detutils.assigners import build_yolov3_targets, pad_ground_truth
from detutils.data import CocoDetection, build_transforms, find_split, generate_shapes
from detutils.engine import load_checkpoint, read_training_log, train
from detutils.engine.presets import schedules_for, yolov3_schedules
from detutils.losses import yolov3_loss
from detutils.models.yolov3 import (
    YOLOV3_PRESETS,
    YOLOv3,
    YOLOv3Config,
    build_yolov3,
    build_yolov3_tiny,
    init_head_biases,
)

BUILDERS = {"yolov3": build_yolov3, "yolov3-tiny": build_yolov3_tiny}
# Parameter counts of the original networks at 80 classes, as ultralytics reports them
# (Darknet's figures: 61.95 M and 8.86 M). Head convs: 3 (5 + C) filters on 1024, 512,
# 256 input channels (YOLOv3), 512 and 256 (tiny), plus one bias each.
ORIGINAL_PARAMETERS = {"yolov3": 61.95e6, "yolov3-tiny": 8.86e6}
EXACT_PARAMETERS = {"yolov3": 61_949_149, "yolov3-tiny": 8_852_366}
HEAD_INPUTS = {"yolov3": 1024 + 512 + 256, "yolov3-tiny": 512 + 256}
CELLS_AT_416 = {"yolov3": [13, 26, 52], "yolov3-tiny": [13, 26]}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_yolov3_tiny(num_classes=3)


@pytest.mark.parametrize("name", ["yolov3", "yolov3-tiny"])
def test_parameter_counts_match_the_original_networks(name):
    with torch.device("meta"):  # no memory, no initialisation: counting only
        model = BUILDERS[name](num_classes=80)
        model_20 = BUILDERS[name](num_classes=20)
    count = count_parameters(model)
    assert count == EXACT_PARAMETERS[name]
    assert abs(count - ORIGINAL_PARAMETERS[name]) / ORIGINAL_PARAMETERS[name] < 0.005
    # 60 classes fewer: each head loses 3 x 60 filters of (inputs + 1 bias).
    heads = len(CELLS_AT_416[name])
    assert count_parameters(model_20) == count - 3 * 60 * (HEAD_INPUTS[name] + heads)


@pytest.mark.parametrize("name", ["yolov3", "yolov3-tiny"])
def test_output_shapes_at_416_px(name):
    # On the meta device: shapes are propagated, nothing is computed.
    with torch.device("meta"):
        model = BUILDERS[name]()
        images = torch.zeros(2, 3, 416, 416)
        raw = model.train()(images)
        decoded, raw_eval = model.eval()(images)
    cells = CELLS_AT_416[name]
    assert [tuple(x.shape) for x in raw] == [(2, 3, n, n, 85) for n in cells]
    assert [tuple(x.shape) for x in raw_eval] == [(2, 3, n, n, 85) for n in cells]
    assert decoded.shape == (2, 3 * sum(n * n for n in cells), 85)  # 10647 for YOLOv3
    assert model.strides == [416 // n for n in cells]


def test_anchors_of_the_heads():
    with torch.device("meta"):
        yolov3, tiny = build_yolov3(), build_yolov3_tiny()
    anchors = [head.anchors.shape for head in yolov3.heads + tiny.heads]
    assert anchors == [(3, 2)] * 5
    real = YOLOv3(replace(YOLOV3_PRESETS["yolov3-tiny"], num_classes=1))
    assert real.heads[0].anchors.tolist() == [[81, 82], [135, 169], [344, 319]]
    # mask 1,2,3 as in the released cfg: anchor 81,82 serves both heads
    assert real.heads[1].anchors.tolist() == [[23, 27], [37, 58], [81, 82]]


def test_forward_modes_at_64_px(tiny):
    images = torch.randn(2, 3, 64, 64)
    tiny.train()
    raw = tiny(images)
    assert isinstance(raw, list) and [tuple(x.shape) for x in raw] == [
        (2, 3, 2, 2, 8),
        (2, 3, 4, 4, 8),
    ]
    tiny.eval()
    with torch.no_grad():
        decoded, raw_eval = tiny(images)
    assert decoded.shape == (2, 3 * (4 + 16), 8)
    torch.testing.assert_close(decoded, tiny.decode(raw_eval))
    # Every decoded probability is a probability; boxes are well-formed.
    assert ((decoded[..., 4:] > 0) & (decoded[..., 4:] < 1)).all()
    assert (decoded[..., 2:4] > decoded[..., 0:2]).all()


def test_head_bias_initialisation():
    model = build_yolov3_tiny(num_classes=3)
    # Default init plus the prior: the default conv bias is uniform in +-1 / sqrt(fan_in).
    for index, head in zip(model.network.head_indices, model.heads, strict=True):
        conv = model.network.layers[index - 1].conv
        bias = conv.bias.detach().view(3, 8)
        spread = 1 / math.sqrt(conv.in_channels)
        objectness_prior = math.log(8 / (640 / head.stride) ** 2)  # -3.91 at stride 32
        assert (bias[:, 4] - objectness_prior).abs().max() <= spread
        assert (bias[:, 5:] - math.log(0.6 / (3 - 0.99))).abs().max() <= spread
        assert bias[:, :4].abs().max() <= spread
        # From zero biases the offsets are exact.
        with torch.no_grad():
            conv.bias.zero_()
    init_head_biases(model.network)
    stride32 = model.network.layers[model.network.head_indices[0] - 1].conv.bias.view(3, 8)
    torch.testing.assert_close(stride32[:, 4], torch.full((3,), math.log(8 / 400)))
    torch.testing.assert_close(stride32[:, 5:], torch.full((3, 3), math.log(0.6 / 2.01)))
    assert (stride32[:, :4] == 0).all()
    # What it buys: the first objectness probability is about 8 / 400 = 0.02, not 0.5.
    assert torch.sigmoid(stride32[0, 4]).item() == pytest.approx(0.02, abs=0.001)


TARGETS = [
    # image 0: an ordinary box, a box smaller than a pixel (no anchor matches it) and a
    # box whose centre lies on the right edge (clamped into the last cell)
    {
        "boxes": torch.tensor([[8.0, 10, 40, 50], [20, 20, 20.5, 20.4], [48, 8, 80, 40]]),
        "labels": torch.tensor([2, 1, 0]),
    },
    # image 1: no box at all
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
]


def test_loss_equals_targets_then_loss_and_is_finite(tiny):
    tiny.train()
    images = torch.randn(2, 3, 64, 64)
    raw = tiny(images)
    losses = tiny.loss(raw, TARGETS)
    assert set(losses) == {"box", "obj", "cls", "loss"}
    gt_boxes, gt_labels, gt_mask = pad_ground_truth(TARGETS)
    layer_targets = build_yolov3_targets(
        gt_boxes,
        gt_labels,
        gt_mask,
        anchors=[head.anchors for head in tiny.heads],
        strides=[32, 16],
        feature_sizes=[(2, 2), (4, 4)],
        iou_t=0.2,
    )
    expected = yolov3_loss(raw, layer_targets, giou_gain=3.54, obj_gain=64.3, cls_gain=37.4)
    for key in losses:
        torch.testing.assert_close(losses[key], expected[key])
    losses["loss"].backward()
    head_conv = tiny.network.layers[tiny.network.head_indices[0] - 1].conv
    assert torch.isfinite(head_conv.weight.grad).all() and head_conv.weight.grad.abs().sum() > 0
    tiny.zero_grad()


def test_loss_accepts_eval_outputs(tiny):
    tiny.eval()
    with torch.no_grad():
        outputs = tiny(torch.randn(2, 3, 64, 64))
        from_eval = tiny.loss(outputs, TARGETS)
        from_raw = tiny.loss(outputs[1], TARGETS)
    for key in from_eval:
        torch.testing.assert_close(from_eval[key], from_raw[key])
    with pytest.raises(ValueError, match="3 targets for a batch of 2"):
        tiny.loss(outputs, TARGETS + TARGETS[:1])


def test_images_without_boxes_only_teach_background(tiny):
    tiny.train()
    raw = tiny(torch.randn(2, 3, 64, 64))
    losses = tiny.loss(raw, [TARGETS[1], TARGETS[1]])
    assert losses["box"].item() == 0.0 and losses["cls"].item() == 0.0
    assert losses["obj"].item() > 0 and torch.isfinite(losses["loss"])


def decoded_by_hand():
    # Two classes. Scores are objectness x class probability:
    #   A (10, 10, 50, 50): 0.9 x (0.8, 0.5) = 0.72 class 0 and 0.45 class 1
    #   B (12, 12, 50, 50): 0.9 x (0.7, 0.0) = 0.63 class 0; IoU with A 38^2 / 40^2 = 0.9:
    #     suppressed by A in class 0
    #   C (0, 0, 1.5, 30): 1.5 px wide, under min_wh = 2: dropped whatever its score
    #   D (100, 100, 140, 140): 0.0005 x 1: under score_thr = 0.001
    rows = [
        [10.0, 10, 50, 50, 0.9, 0.8, 0.5],
        [12.0, 12, 50, 50, 0.9, 0.7, 0.0],
        [0.0, 0, 1.5, 30, 0.99, 0.99, 0.99],
        [100.0, 100, 140, 140, 0.0005, 1.0, 1.0],
    ]
    return torch.tensor([rows])


def test_predict_multi_label_score_and_size_filter():
    model = build_yolov3_tiny(num_classes=2)
    (dets,) = model.predict((decoded_by_hand(), []))
    torch.testing.assert_close(dets["boxes"], torch.tensor([[10.0, 10, 50, 50]] * 2))
    torch.testing.assert_close(dets["scores"], torch.tensor([0.72, 0.45]))
    assert dets["labels"].tolist() == [0, 1]
    (best_only,) = model.predict((decoded_by_hand(), []), multi_label=False)
    assert best_only["labels"].tolist() == [0]
    (no_size_filter,) = model.predict((decoded_by_hand(), []), min_wh=0.0)
    assert no_size_filter["scores"][0].item() == pytest.approx(0.99**2)
    (one,) = model.predict((decoded_by_hand(), []), max_det=1)
    assert len(one["scores"]) == 1


def test_predict_from_training_outputs_decodes_first(tiny):
    tiny.eval()
    with torch.no_grad():
        decoded, raw = tiny(torch.randn(1, 3, 64, 64))
    from_eval = tiny.predict((decoded, raw), score_thr=0.0)
    from_raw = tiny.predict(raw, score_thr=0.0)
    assert len(from_eval[0]["scores"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(from_eval[0][key], from_raw[0][key])


def test_config_presets_and_factories():
    assert set(YOLOV3_PRESETS) == {"yolov3", "yolov3-tiny"}
    config = YOLOV3_PRESETS["yolov3"]
    assert (config.giou_gain, config.obj_gain, config.cls_gain) == (3.54, 64.3, 37.4)
    assert (config.iou_t, config.gr, config.num_classes, config.img_size) == (0.2, 1.0, 80, 416)
    with torch.device("meta"):
        model = build_yolov3_tiny(num_classes=5)
    assert model.config.num_classes == 5 and YOLOV3_PRESETS["yolov3-tiny"].num_classes == 80
    assert model.name == "yolov3-tiny" and model.num_classes == 5
    with pytest.raises(ValueError, match="multiple of 32"):
        YOLOv3(YOLOv3Config(cfg="yolov3-tiny.cfg", img_size=100))


# One stride-2 conv and a head: the smallest network a cfg can describe.
SMALL_CFG = """
[net]
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=18
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,4, 8,8, 16,16
classes=1
"""


def test_a_cfg_file_outside_the_package(tmp_path):
    path = tmp_path / "small.cfg"
    path.write_text(SMALL_CFG)
    model = YOLOv3(YOLOv3Config(name="small", cfg=str(path), num_classes=2, img_size=8))
    raw = model.train()(torch.randn(1, 3, 8, 8))
    assert [tuple(x.shape) for x in raw] == [(1, 3, 4, 4, 7)]
    assert model.strides == [2]


def test_a_few_steps_fit_one_image():
    # The whole chain (targets, loss, gradients) points the right way: a few Adam steps on
    # one 64 px image lower the loss.
    torch.manual_seed(1)
    model = build_yolov3_tiny(num_classes=3).train()
    images = torch.randn(1, 3, 64, 64)
    targets = TARGETS[:1]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(8):
        losses = model.loss(model(images), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(losses["loss"].item())
    assert history[-1] < 0.5 * history[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(tiny):
    tiny.train()
    images = torch.randn(2, 3, 64, 64)
    cpu_losses = tiny.loss(tiny(images), TARGETS)
    model = tiny.to("cuda")
    cuda_targets = [{key: value.cuda() for key, value in t.items()} for t in TARGETS]
    cuda_losses = model.loss(model(images.cuda()), cuda_targets)
    for key in cpu_losses:
        torch.testing.assert_close(cuda_losses[key].cpu(), cpu_losses[key], rtol=1e-3, atol=1e-3)
    model.eval()
    with torch.no_grad():
        dets = model.predict(model(images.cuda()), score_thr=0.0)
    assert dets[0]["boxes"].device.type == "cuda"
    tiny.to("cpu")


def test_each_preset_has_the_three_schedules():
    # The ci and cpu schedules themselves: tests/test_training_schedules.py.
    for name in YOLOV3_PRESETS:
        schedules = schedules_for(name)
        assert set(schedules) == {"ci", "cpu", "gpu"}
        for schedule in schedules.values():
            assert schedule.img_size % 32 == 0  # the largest stride


def test_the_gpu_schedule_follows_the_reference_hyperparameters():
    # ultralytics/yolov3 (archive) train.py: hyp lr0 0.01, momentum 0.937, weight decay
    # 5e-4, SGD with Nesterov momentum, 300 epochs, 64 images per optimizer step, burn-in
    # of 3 epochs, cosine to 0.05 of lr0, EMA of the weights, mixed precision.
    gpu = yolov3_schedules()["gpu"]
    assert (gpu.optimizer, gpu.lr, gpu.momentum, gpu.weight_decay) == ("sgd", 0.01, 0.937, 5e-4)
    assert (gpu.epochs, gpu.iterations, gpu.batch_size) == (300, 0, 64)
    assert (gpu.warmup_epochs, gpu.final_lr_fraction) == (3.0, 0.05)
    assert gpu.ema and gpu.amp and gpu.augment


def test_the_ci_schedule_trains_through_the_engine(tmp_path):
    # The whole chain on a generated set of eight 64 px images: three iterations of
    # four images (so the second epoch stops after one), a checkpoint, finite losses.
    generate_shapes(tmp_path / "data", train=8, val=4, size=64, seed=0, workers=1)
    ci = yolov3_schedules()["ci"]
    train_set = CocoDetection(
        *find_split(tmp_path / "data", "train"), transforms=build_transforms(ci.img_size, False)
    )
    torch.manual_seed(0)
    model = build_yolov3_tiny(num_classes=train_set.num_classes)
    result = train(model, train_set, ci, out_dir=tmp_path / "run", progress=False)
    torch.set_num_threads(1)  # the trainer set the schedule's count; keep conftest's
    assert (result.iterations, result.epochs_done) == (ci.iterations, 2)
    train_log, _ = read_training_log(tmp_path / "run")
    assert list(train_log.columns) == ["epoch", "iteration", "lr", "loss", "box", "cls", "obj"]
    assert torch.isfinite(torch.tensor(train_log[["loss", "box", "obj", "cls"]].to_numpy())).all()
    assert load_checkpoint(result.checkpoint)["schedule"] == ci.to_dict()
