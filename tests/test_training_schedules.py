"""The ci, cpu and gpu schedules of YOLOv3-tiny, NanoDet-m and YOLOv8n, and that each one trains."""

import math

import pytest
import torch

from detutils.data import CocoDetection, build_train_set, find_split, generate_shapes
from detutils.engine import read_training_log, train
from detutils.engine.presets import (
    SCHEDULE_PRESETS,
    nanodet_schedules,
    schedules_for,
    yolov3_schedules,
    yolov8_schedules,
)
from detutils.engine.schedule import lr_factor
from detutils.models import build_detector

SCHEDULES = {
    "yolov3-tiny": yolov3_schedules,
    "nanodet-m": nanodet_schedules,
    "yolov8n": yolov8_schedules,
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes(root, train=8, val=4, size=64, seed=0, workers=1)


@pytest.mark.parametrize("name", SCHEDULES)
def test_ci_and_cpu_schedules(name):
    schedules = SCHEDULES[name]()
    assert set(schedules) == {"ci", "cpu", "gpu"}
    assert schedules_for(build_detector(name, num_classes=6)) == schedules
    ci, cpu = schedules["ci"], schedules["cpu"]
    assert ci.iterations <= 5 and ci.img_size <= 64 and (ci.threads, ci.workers) == (1, 0)
    # cpu: planned in iterations, one evaluation at the end, a time guard that leaves
    # room for start-up and evaluation inside ten minutes, followed by the schedule.
    assert cpu.iterations > 0 and cpu.eval_interval == 0 and cpu.max_minutes <= 9
    assert cpu.lr_by_time and cpu.cache_images
    assert cpu.optimizer == "adamw" and not cpu.ema
    # Planned in float32, which every CPU runs (bfloat16 is the --amp opt-in), on
    # channels-last weights, which every CPU's convolutions read faster.
    assert (cpu.amp, cpu.channels_last) == (False, True)
    # A multiple of the largest stride, the 320 px of the shapes images or a little more
    # (NanoDet-m's cheap steps afford 384 px, which its small boxes gain from).
    assert cpu.img_size % 32 == 0 and 320 <= cpu.img_size <= 384
    # Whatever the size of an epoch (2,000 shapes images), the learning rate peaks at
    # the end of the warm-up and reaches its floor at the last planned iteration.
    steps_per_epoch = math.ceil(2000 / cpu.batch_size)
    assert cpu.total_iterations(steps_per_epoch) == cpu.iterations
    warmup = round(cpu.warmup_epochs * steps_per_epoch)
    assert lr_factor(warmup, cpu.iterations, cpu, warmup) == pytest.approx(1.0)
    assert lr_factor(cpu.iterations - 1, cpu.iterations, cpu, warmup) == pytest.approx(
        cpu.final_lr_fraction
    )


def test_gpu_schedules_follow_the_references():
    # NanoDet config/nanodet-m.yml: SGD momentum 0.9, lr 0.14, wd 1e-4, batch 192,
    # 280 epochs, MultiStepLR at 240, 260, 275 by 0.1.
    nanodet = nanodet_schedules()["gpu"]
    assert (nanodet.optimizer, nanodet.lr, nanodet.momentum) == ("sgd", 0.14, 0.9)
    assert (nanodet.weight_decay, nanodet.batch_size, nanodet.epochs) == (1e-4, 192, 280)
    assert nanodet.lr_schedule == "step" and nanodet.step_gamma == 0.1
    assert [round(m * 280) for m in nanodet.step_milestones] == [240, 260, 275]
    # ultralytics cfg/default.yaml with a 64-image batch: SGD 0.01, momentum 0.937,
    # wd 5e-4, 3 warm-up epochs, lrf 0.01, EMA, AMP; 500 epochs at 640 px for YOLOv8.
    yolo = yolov8_schedules()["gpu"]
    assert (yolo.optimizer, yolo.lr, yolo.momentum, yolo.weight_decay) == (
        "sgd", 0.01, 0.937, 5e-4,
    )  # fmt: skip
    assert (yolo.epochs, yolo.batch_size, yolo.img_size) == (500, 64, 640)
    assert (yolo.warmup_epochs, yolo.final_lr_fraction, yolo.ema, yolo.amp) == (
        3.0, 0.01, True, True,
    )  # fmt: skip
    # mosaic 1.0, scale 0.5, translate 0.1, hsv_h/s/v 0.015/0.7/0.4, warmup_bias_lr 0.1
    assert (yolo.mosaic, yolo.scale, yolo.translate, yolo.hsv) == (1.0, 0.5, 0.1, (0.015, 0.7, 0.4))
    assert yolo.warmup_bias_lr == 0.1
    # NanoDet's pipeline: scale [0.6, 1.4], translate 0.2
    assert (nanodet.scale, nanodet.translate) == (0.4, 0.2)
    # ultralytics/yolov3 archive train.py: hyp lr0 0.01, momentum 0.937, weight_decay 5e-4,
    # hsv 0.0138/0.678/0.36, cosine to 0.05, mosaic in training, biases from lr 0.1
    yolov3 = yolov3_schedules()["gpu"]
    assert (yolov3.lr, yolov3.momentum, yolov3.weight_decay, yolov3.final_lr_fraction) == (
        0.01, 0.937, 5e-4, 0.05,
    )  # fmt: skip
    assert (yolov3.mosaic, yolov3.hsv, yolov3.warmup_bias_lr) == (1.0, (0.0138, 0.678, 0.36), 0.1)


@pytest.mark.filterwarnings("ignore:AMP. no native low-precision kernels")
@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("schedule_name", ["ci", "cpu", "gpu"])
def test_each_schedule_starts_and_runs_its_first_iterations(shapes, tmp_path, name, schedule_name):
    # Every schedule as it is (optimizer, warm-up, EMA, augmentation, caching), cut to two
    # iterations of two 64 px images in this process; AMP runs in bfloat16 on a CPU that has it.
    schedule = SCHEDULES[name]()[schedule_name].replace(
        iterations=2, batch_size=2, img_size=64, workers=0, threads=1, max_minutes=None,
        lr_by_time=False,
    )  # fmt: skip
    train_set = build_train_set(CocoDetection(*find_split(shapes, "train")), schedule)
    torch.manual_seed(0)
    model = build_detector(name, num_classes=train_set.num_classes)
    result = train(model, train_set, schedule, out_dir=tmp_path / "run", progress=False)
    torch.set_num_threads(1)  # the trainer set the schedule's count; keep conftest's
    assert result.iterations == 2
    train_log, _ = read_training_log(tmp_path / "run")
    losses = train_log.drop(columns=["epoch", "iteration", "lr"])
    assert torch.isfinite(torch.tensor(losses.to_numpy())).all()


def test_every_detector_has_its_schedule_presets():
    from detutils.models import DETECTORS

    assert set(SCHEDULE_PRESETS) == set(DETECTORS)
    first, second = schedules_for("yolov8n"), schedules_for("yolov8n")
    assert first == second and first is not second  # a new dict each time
    with pytest.raises(TypeError):
        SCHEDULE_PRESETS["mine"] = yolov8_schedules  # the table is read-only
