"""Tests of detutils.engine.trainer (and its loaders, logs and single-process collectives)."""

import importlib
import math

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_detector import TinyDetector, build
from torch.utils.data import Subset

from detutils.data import CocoDetection, build_transforms, find_split, generate_shapes
from detutils.distributed import (
    DistributedContext,
    all_gather_objects,
    all_reduce_mean,
    init_distributed,
    resolve_device,
)
from detutils.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from detutils.engine.loader import build_train_loader, set_loader_epoch
from detutils.engine.log import CsvLog, ProgressLines, plot_training_log, read_training_log
from detutils.engine.schedule import lr_factor
from detutils.engine.trainer import (
    NonFiniteLossError,
    cpu_has_bfloat16,
    move_targets,
    seed_everything,
    to_float32,
    train,
)
from detutils.models import DETECTORS, build_detector

# The module, not the function of the same name that detutils.engine exports.
train_module = importlib.import_module("detutils.engine.trainer")

# 16 training images of 64 px, batch 4: four iterations per epoch.
ITERATIONS_PER_EPOCH = 4


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """(train set with augmentation, val set) of a tiny generated shapes set."""
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, train=16, val=8, size=64, seed=0, workers=1)
    train_set = CocoDetection(*find_split(root, "train"), transforms=build_transforms(64, True))
    val_set = CocoDetection(*find_split(root, "val"), transforms=build_transforms(64, False))
    return train_set, val_set


def run(shapes, out_dir, **overrides):
    """Seed, build the tiny detector, train it on the ci schedule with ``overrides``."""
    train_set, val_set = shapes
    seed_everything(0)
    model = build(train_set.num_classes)
    device = overrides.pop("device", "auto")
    schedule = model.config.schedules["ci"].replace(**overrides)
    return train(
        model, train_set, schedule, val_set=val_set, out_dir=out_dir, progress=False,
        device=device,
    )  # fmt: skip


def test_training_lowers_the_loss_and_logs_every_iteration(shapes, tmp_path):
    result = run(shapes, tmp_path, epochs=4)
    assert (result.epochs_done, result.iterations) == (4, 4 * ITERATIONS_PER_EPOCH)
    assert not result.model.training and result.checkpoint == tmp_path / "last.pt"
    train_log, eval_log = read_training_log(tmp_path)
    assert list(train_log.columns) == ["epoch", "iteration", "lr", "loss", "loss_box", "loss_cls"]
    assert train_log["iteration"].tolist() == list(range(1, 17))
    per_epoch = train_log.groupby("epoch")["loss"].mean()
    assert per_epoch[4] < 0.95 * per_epoch[1]
    torch.testing.assert_close(
        torch.tensor(train_log["loss"].to_numpy()),
        torch.tensor((train_log["loss_box"] + train_log["loss_cls"]).to_numpy()),
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip
    schedule = result.model.config.schedules["ci"].replace(epochs=4)
    expected_lr = [schedule.lr * lr_factor(i, 16, schedule, warmup=2) for i in range(16)]
    assert train_log["lr"].tolist() == pytest.approx(expected_lr, rel=1e-5)
    assert eval_log["epoch"].tolist() == [1, 2, 3, 4]  # eval_interval 1
    assert eval_log["AP"].iloc[-1] == pytest.approx(result.metrics["AP"], abs=1e-6)
    figure = plot_training_log(tmp_path, smooth=2)
    assert len(figure.axes) == 3
    assert {line.get_label() for line in figure.axes[0].get_lines()} >= {"loss", "loss_cls"}


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(shapes, tmp_path, monkeypatch):
    honest_loss, calls = TinyDetector.loss, []

    def loss_that_breaks(self, outputs, targets):
        losses = honest_loss(self, outputs, targets)
        calls.append(1)
        if len(calls) == 6:  # iteration 6: the second of epoch 2
            losses["loss_cls"] = losses["loss_cls"] * math.nan
            losses["loss"] = losses["loss_cls"] + losses["loss_box"]
        return losses

    monkeypatch.setattr(TinyDetector, "loss", loss_that_breaks)
    with pytest.raises(NonFiniteLossError) as error:
        run(shapes, tmp_path, epochs=2)
    message = str(error.value)
    assert "epoch 2, iteration 6" in message
    assert "loss=nan" in message and "loss_cls=nan" in message and "loss_box=" in message
    state = load_checkpoint(tmp_path / "last.pt")
    assert (state["epoch"], state["iteration"]) == (1, ITERATIONS_PER_EPOCH)
    assert all(torch.isfinite(value).all() for value in state["model"].values())
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "eval_log.csv",
        "last.pt",
        "train_log.csv",
    ]  # no temporary file left


def test_a_run_of_iterations_ends_inside_an_epoch(shapes, tmp_path):
    # 6 iterations at 4 per epoch: all of epoch 1, half of epoch 2; the cosine is planned
    # over the 6 (epochs is ignored) and the run evaluates once, at its end.
    result = run(shapes, tmp_path, epochs=5, iterations=6)
    assert (result.epochs_done, result.iterations) == (2, 6)
    train_log, eval_log = read_training_log(tmp_path)
    assert train_log["epoch"].tolist() == [1, 1, 1, 1, 2, 2]
    schedule = result.model.config.schedules["ci"].replace(iterations=6)
    expected_lr = [schedule.lr * lr_factor(i, 6, schedule, warmup=2) for i in range(6)]
    assert train_log["lr"].tolist() == pytest.approx(expected_lr, rel=1e-5)
    assert eval_log["iteration"].tolist() == [4, 6]  # eval_interval 1, and the end
    assert load_checkpoint(result.checkpoint)["iteration"] == 6


def test_time_budget_stops_cleanly_and_evaluates(shapes, tmp_path):
    result = run(shapes, tmp_path, epochs=3, max_minutes=1e-9)  # spent before iteration 1 ends
    assert result.out_of_time and result.iterations == 1 and result.epochs_done == 1
    assert set(result.metrics) >= {"AP", "AP50"}
    assert load_checkpoint(result.checkpoint)["epoch"] == 1
    assert len(read_training_log(tmp_path)[1]) == 1


class SteppingClock:
    """Stands in for the ``time`` module: ``monotonic`` is 0, then 6 s more at each call."""

    def __init__(self) -> None:
        self.calls = 0

    def monotonic(self) -> float:
        self.calls += 1
        return 6.0 * (self.calls - 1)


def test_lr_by_time_ends_the_cosine_at_the_deadline(shapes, tmp_path, monkeypatch):
    # 20 iterations planned, 30 s of budget, and a clock that moves 6 s per reading: the
    # trainer reads it at the start (0 s: the deadline is 30 s) and at each iteration's
    # loss (6k s). The learning rate's clock starts at the first loss (6 s: start-up costs
    # do not count), so after iteration k the fraction spent is (6k - 6) / 24: 0, 1/4, 1/2,
    # 3/4, 1. The schedule stands at the larger of the iterations done and
    # floor(fraction * 19): 1, 4, 9, 14, then 19 (the floor of the cosine), and iteration
    # 6 finds the deadline passed and is the last.
    monkeypatch.setattr(train_module, "time", SteppingClock())
    result = run(shapes, tmp_path, iterations=20, max_minutes=0.5, lr_by_time=True)
    assert result.out_of_time and result.iterations == 6
    schedule = result.model.config.schedules["ci"].replace(iterations=20)
    expected = [schedule.lr * lr_factor(i, 20, schedule, 2) for i in (0, 1, 4, 9, 14, 19)]
    train_log, _ = read_training_log(tmp_path)
    assert train_log["lr"].tolist() == pytest.approx(expected, rel=1e-5)
    assert expected[-1] == pytest.approx(schedule.lr * schedule.final_lr_fraction)


def test_amp_without_native_bfloat16_trains_in_float32(shapes, tmp_path, monkeypatch):
    plain = run(shapes, tmp_path / "plain", epochs=1, amp=False, device="cpu")
    monkeypatch.setattr(train_module, "cpu_has_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match="training in float32"):
        amp = run(shapes, tmp_path / "amp", epochs=1, amp=True, device="cpu")
    for name, value in plain.model.state_dict().items():
        assert torch.equal(value, amp.model.state_dict()[name]), name
    assert load_checkpoint(tmp_path / "amp" / "last.pt")["scaler"] == {}  # disabled scaler


@pytest.mark.skipif(not cpu_has_bfloat16(), reason="this CPU has no native bfloat16")
def test_amp_on_cpu_runs_the_network_in_bfloat16_and_the_loss_in_float32(
    shapes, tmp_path, monkeypatch
):
    seen = {"conv": set(), "loss": set()}
    honest_loss = TinyDetector.loss

    def loss(self, outputs, targets):
        seen["loss"].add(outputs.dtype)
        return honest_loss(self, outputs, targets)

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d) and module.training:  # not the evaluation
            seen["conv"].add(output.dtype)

    monkeypatch.setattr(TinyDetector, "loss", loss)
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        plain = run(shapes, tmp_path / "plain", epochs=1, amp=False, device="cpu")
        assert seen == {"conv": {torch.float32}, "loss": {torch.float32}}
        seen["conv"].clear()
        amp = run(shapes, tmp_path / "amp", epochs=1, amp=True, device="cpu")
    finally:
        handle.remove()
    assert seen == {"conv": {torch.bfloat16}, "loss": {torch.float32}}
    assert load_checkpoint(tmp_path / "amp" / "last.pt")["scaler"] == {}  # bfloat16: no scaling
    for name, value in amp.model.state_dict().items():  # float32 weights, a little apart
        reference = plain.model.state_dict()[name]
        assert value.dtype == reference.dtype
        if value.is_floating_point():
            torch.testing.assert_close(value, reference, rtol=0.05, atol=0.02)
    assert math.isfinite(amp.metrics["AP"])


def test_to_float32_casts_nested_floating_tensors_only():
    half, index = torch.ones(2, dtype=torch.bfloat16), torch.arange(3)
    cast = to_float32({"a": [half, (half, index)], "b": 1.5, "c": None})
    assert cast["a"][0].dtype == torch.float32 and isinstance(cast["a"][1], tuple)
    assert cast["a"][1][0].dtype == torch.float32 and cast["a"][1][1] is index
    assert cast["b"] == 1.5 and cast["c"] is None


def test_channels_last_trains_like_the_usual_layout(shapes, tmp_path):
    usual = run(shapes, tmp_path / "usual", epochs=1, ema=True, ema_tau=2.0)
    nhwc = run(shapes, tmp_path / "nhwc", epochs=1, ema=True, ema_tau=2.0, channels_last=True)
    assert nhwc.iterations == usual.iterations == ITERATIONS_PER_EPOCH
    for trained, reference in ((nhwc.model, usual.model), (nhwc.ema_model, usual.ema_model)):
        for name, value in trained.state_dict().items():
            assert value.is_contiguous(), f"{name} is handed back channels-last"
            torch.testing.assert_close(value, reference.state_dict()[name], rtol=1e-4, atol=1e-5)
    assert nhwc.metrics["AP"] == pytest.approx(usual.metrics["AP"], abs=1e-3)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_computes_the_same_loss_channels_last(name):
    torch.manual_seed(0)
    model = build_detector(name, num_classes=3).train()
    # two-stage DETRs pick their queries among the encoder's tokens: 340 at 128 px
    size = 128 if "deformable-detr" in name else 64
    images = torch.rand(2, 3, size, size)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 62.0], [0.0, 0.0, 8.0, 8.0]]),
         "labels": torch.tensor([0, 2])},
    ]  # fmt: skip
    torch.manual_seed(1)  # the same draws for a detector that samples (Faster R-CNN)
    usual = model.loss(model(images), targets)
    model.to(memory_format=torch.channels_last)
    torch.manual_seed(1)
    nhwc = model.loss(model(images.contiguous(memory_format=torch.channels_last)), targets)
    for key, value in usual.items():
        torch.testing.assert_close(nhwc[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_ema_is_kept_and_used_for_evaluation(shapes, tmp_path):
    result = run(shapes, tmp_path, epochs=1, ema=True, ema_tau=2.0)
    assert result.best_model is result.ema_model
    weights = result.model.state_dict()["head.weight"]
    assert not torch.equal(result.ema_model.state_dict()["head.weight"], weights)
    state = load_checkpoint(result.checkpoint)
    assert state["ema"]["updates"] == ITERATIONS_PER_EPOCH


def test_resuming_another_head_is_an_error(shapes, tmp_path):
    path = save_checkpoint({"model_name": "tiny", "num_classes": 3}, tmp_path / "three.pt")
    model = build(num_classes=6)
    schedule = model.config.schedules["ci"]
    with pytest.raises(CheckpointError, match="three.pt has 3 classes, the model 6"):
        train(model, shapes[0], schedule, resume=path, progress=False)


def test_empty_training_set_is_an_error(shapes):
    model = build(num_classes=6)
    schedule = model.config.schedules["ci"]
    with pytest.raises(ValueError, match="training set is empty"):
        train(model, Subset(shapes[0], []), schedule, progress=False)


def test_train_loader_shards_like_one_process():
    # Two ranks with batch 2 each take, at every step, the four images that one process
    # with batch 4 takes: rank r gets positions r, r + 2, ... of the same permutation.
    items = list(range(12))

    def batches(world_size, rank, batch_size, epoch):
        context = DistributedContext(rank=rank, world_size=world_size)
        loader = build_train_loader(items, batch_size, context, workers=0, seed=3, collate_fn=list)
        set_loader_epoch(loader, epoch, seed=3, rank=rank)
        return list(loader)

    single = batches(1, 0, 4, epoch=0)
    rank0, rank1 = batches(2, 0, 2, epoch=0), batches(2, 1, 2, epoch=0)
    assert [sorted(a + b) for a, b in zip(rank0, rank1, strict=True)] == [sorted(b) for b in single]
    assert sorted(sum(single, [])) == items
    assert batches(1, 0, 4, epoch=0) == single  # an epoch depends on (seed, epoch) only
    assert batches(1, 0, 4, epoch=1) != single


class RandomItems(torch.utils.data.Dataset):
    """Items drawn from NumPy's and torch's generators, as augmentation draws them."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        numpy_draw = float(np.random.rand())  # noqa: NPY002 -- the global generator on purpose
        return (index, numpy_draw, float(torch.rand(())))


def test_workers_draw_the_same_numbers_each_run():
    context = DistributedContext()
    loader = build_train_loader(RandomItems(), 2, context, workers=1, seed=0, collate_fn=list)

    def epoch_items(epoch):
        set_loader_epoch(loader, epoch, seed=0)
        return [item for batch in loader for item in batch]

    first = epoch_items(0)
    assert epoch_items(0) == first
    assert epoch_items(1) != first
    assert len({item[1] for item in first}) == 4  # NumPy differs item to item


def test_single_process_collectives_and_devices(monkeypatch):
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    context = init_distributed("cpu")
    assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
    values = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce_mean(values), values)
    assert all_gather_objects({"a": 1}) == [{"a": 1}]
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_move_targets_moves_tensors_only():
    targets = [{"boxes": torch.zeros(2, 4), "image_id": 7}]
    moved = move_targets(targets, torch.device("cpu"))
    assert moved[0]["image_id"] == 7 and moved[0]["boxes"].shape == (2, 4)


def test_csv_log_rewrites_repeated_epochs(tmp_path):
    path = tmp_path / "log.csv"
    log = CsvLog(path)
    for epoch in (1, 1, 2):
        log.write({"epoch": epoch, "loss": 0.5})
    resumed = CsvLog(path, keep_before_epoch=2)  # epoch 2 is run again
    resumed.write({"epoch": 2, "loss": 0.25})
    assert pd.read_csv(path).to_dict("list") == {"epoch": [1, 1, 2], "loss": [0.5, 0.5, 0.25]}
    with pytest.raises(ValueError, match="lacks"):
        resumed.write({"epoch": 3})
    CsvLog(tmp_path / "off.csv", enabled=False).write({"epoch": 1})
    assert not (tmp_path / "off.csv").exists()
    with pytest.raises(FileNotFoundError, match="no train_log.csv"):
        read_training_log(tmp_path / "nowhere")


def test_train_restores_the_thread_count(shapes, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run(shapes, None, threads=1, iterations=1)  # the ci schedule uses one thread
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_resuming_with_another_world_size_says_the_random_states_are_new(shapes, tmp_path):
    run(shapes, tmp_path, iterations=2)
    state = load_checkpoint(tmp_path / "last.pt")
    state["rng"] = state["rng"] * 2  # as if two processes had written it
    save_checkpoint(state, tmp_path / "two.pt")
    model = build(num_classes=shapes[0].num_classes)
    schedule = model.config.schedules["ci"].replace(iterations=4)
    with pytest.warns(UserWarning, match=r"resuming 2 process\(es\) as 1: the random states"):
        train(model, shapes[0], schedule, resume=tmp_path / "two.pt", progress=False)


def test_progress_lines_every_interval_with_the_time_left():
    class Clock:
        now = 100.0

        def __call__(self):
            return self.now

    clock, printed = Clock(), []

    class Stream:
        def write(self, text):
            printed.append(text)

        def flush(self):
            pass

    lines = ProgressLines(total=10, enabled=True, every_seconds=60, stream=Stream(), clock=clock)
    assert lines.update(1, {"loss": 3.0}) is None  # the pace counts from the first step
    clock.now += 30
    assert lines.update(2, {"loss": 2.5}) is None  # 30 s: not yet due
    clock.now += 30  # 60 s for the 2 steps after the first: 30 s a step, 7 steps left
    line = lines.update(3, {"loss": 2.0, "box": 1.25, "cls": 0.75})
    assert line == "iteration 3/10  loss 2 (box 1.25, cls 0.75)  3.5 min left"
    assert printed[0] == line
    deadline = ProgressLines(10, True, 60, deadline=clock.now + 90, stream=Stream(), clock=clock)
    deadline.update(1, {"loss": 1.0})
    clock.now += 60
    assert deadline.update(2, {"loss": 1.0}).endswith("0.5 min left")  # the budget ends first
    assert ProgressLines(10, False).update(5, {"loss": 1.0}) is None


def test_on_step_sees_every_step_and_the_evaluated_network(shapes, tmp_path):
    seen = []
    train_set, _ = shapes
    seed_everything(0)
    model = build(train_set.num_classes)
    schedule = model.config.schedules["ci"].replace(iterations=3, ema=True)
    result = train(
        model, train_set, schedule, progress=False,
        on_step=lambda step, network: seen.append((step, network)),
    )  # fmt: skip
    assert [step for step, _ in seen] == [1, 2, 3]
    assert all(network is result.ema_model for _, network in seen)  # the EMA, not the model
