"""Tests of detutils.engine.schedule: the schedule, parameter groups, learning rate."""

import pytest
import torch
from torch import nn

from detutils.engine.presets import ci_schedule, cpu_budget_schedule, default_schedules
from detutils.engine.schedule import (
    TrainSchedule,
    build_lr_scheduler,
    build_optimizer,
    lr_factor,
    parameter_groups,
    split_biases,
)


class NormNet(nn.Module):
    """conv (weight 2*3*3*3 = 54, no bias) -> BatchNorm (2 + 2) -> linear (weight 6, bias 3),
    plus a GroupNorm (2 + 2) and a frozen linear (8 + 4) that must stay out of every group."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.group_norm = nn.GroupNorm(1, 2)
        self.linear = nn.Linear(2, 3)
        self.frozen = nn.Linear(2, 4)
        self.frozen.requires_grad_(False)


def test_schedule_checks_fields_and_replaces():
    schedule = TrainSchedule()
    assert schedule.replace(epochs=3, lr=None).epochs == 3
    assert schedule.replace(lr=None).lr == schedule.lr  # None leaves a field as it is
    with pytest.raises(ValueError, match="no field batch"):
        schedule.replace(batch=4)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainSchedule(epochs=0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainSchedule(optimizer="adam")
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainSchedule(lr_schedule="linear")
    with pytest.raises(ValueError, match="lr must be positive"):
        TrainSchedule(lr=0.0)
    with pytest.raises(ValueError, match="max_minutes must be positive"):
        TrainSchedule(max_minutes=0.0)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainSchedule(ema_decay=1.0)


def test_a_schedule_in_iterations_overrides_the_epochs():
    assert TrainSchedule(epochs=3).total_iterations(iterations_per_epoch=10) == 30
    assert TrainSchedule(epochs=3, iterations=7).total_iterations(iterations_per_epoch=10) == 7
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        TrainSchedule(iterations=-1)
    schedule = TrainSchedule(epochs=3, iterations=7, lr=1.0, warmup_epochs=0.0)
    optimizer = build_optimizer(nn.Linear(2, 2), schedule)
    scheduler = build_lr_scheduler(optimizer, schedule, iterations_per_epoch=10)
    for _ in range(6):  # the cosine reaches its end at iteration 6 (0-based), the 7th step
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(schedule.final_lr_fraction)


def test_lr_by_time_follows_the_larger_of_the_two_clocks():
    with pytest.raises(ValueError, match="lr_by_time needs max_minutes"):
        TrainSchedule(lr_by_time=True)
    schedule = TrainSchedule(iterations=11, lr=1.0, warmup_epochs=0.0, max_minutes=1.0)
    spent = [0.0]
    timed = schedule.replace(lr_by_time=True)
    optimizer = build_optimizer(nn.Linear(2, 2), timed)
    scheduler = build_lr_scheduler(optimizer, timed, 100, time_spent=lambda: spent[0])
    seen = []
    for fraction in (0.0, 0.05, 0.5, 0.5, 1.0):  # the clock after each step
        seen.append(optimizer.param_groups[0]["lr"])
        spent[0] = fraction
        optimizer.step()
        scheduler.step()
    seen.append(optimizer.param_groups[0]["lr"])
    # Steps 1 and 2 keep to the plan (0.05 of 10 is 0); then the clock says 5 of 10 twice
    # (step 3 is behind it, step 4 at it), then 10: the floor, at step 5 of 11.
    steps = (0, 1, 2, 5, 5, 10)
    assert seen == pytest.approx([lr_factor(i, 11, schedule, 0) for i in steps])
    assert seen[-1] == pytest.approx(schedule.final_lr_fraction)


def test_schedule_round_trips_through_a_dict():
    schedule = TrainSchedule(step_milestones=(0.5, 0.75), max_minutes=2.5)
    values = schedule.to_dict()
    values["step_milestones"] = list(values["step_milestones"])  # as a checkpoint may give it
    assert TrainSchedule.from_dict(values) == schedule


def test_default_schedules_cover_the_three_names():
    schedules = default_schedules()
    assert sorted(schedules) == ["ci", "cpu", "gpu"]
    assert schedules["ci"].threads == 1 and schedules["ci"].workers == 0
    assert schedules["gpu"].amp and not schedules["cpu"].amp


def test_shared_ci_and_cpu_schedules():
    ci = ci_schedule()
    assert (ci.iterations, ci.batch_size, ci.img_size, ci.threads, ci.workers) == (3, 4, 64, 1, 0)
    assert not ci.augment and ci.max_minutes is None
    cpu = cpu_budget_schedule(iterations=500, lr=0.003)
    assert (cpu.iterations, cpu.lr, cpu.img_size, cpu.batch_size) == (500, 0.003, 256, 16)
    assert cpu.max_minutes < 10 and cpu.lr_by_time and cpu.cache_images and cpu.augment
    assert not cpu.amp and not cpu.channels_last
    faster = cpu_budget_schedule(100, 0.001, img_size=320, amp=True, channels_last=True)
    assert faster.img_size == 320 and faster.amp and faster.channels_last
    with pytest.raises(ValueError, match="lr must be positive"):
        cpu_budget_schedule(iterations=500, lr=0.0)


def test_parameter_groups_spare_norms_and_biases():
    model = NormNet()
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    decayed = {id(p) for p in decay["params"]}
    spared = {id(p) for p in no_decay["params"]}
    assert decayed == {id(model.conv.weight), id(model.linear.weight)}
    norms = [model.bn.weight, model.bn.bias, model.group_norm.weight, model.group_norm.bias]
    assert spared == {id(p) for p in norms + [model.linear.bias]}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for group in (decay, no_decay) for p in group["params"]) == trainable


def test_parameter_groups_count_a_shared_parameter_once():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].weight = model[0].weight  # tied weights
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 2
    build_optimizer(model, TrainSchedule())  # torch rejects a parameter listed twice


def test_build_optimizer_kinds():
    model = NormNet()
    sgd = build_optimizer(model, TrainSchedule(optimizer="sgd", lr=0.1, momentum=0.9))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    assert [group["weight_decay"] for group in sgd.param_groups] == [5e-4, 0.0]
    adamw = build_optimizer(model, TrainSchedule(optimizer="adamw", lr=1e-3, momentum=0.9))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.999)


def test_lr_factor_hand_values():
    # 100 iterations, 10 of warm-up starting at 0.1: iteration 5 is half way, 0.55.
    schedule = TrainSchedule(warmup_start_factor=0.1, final_lr_fraction=0.2)
    assert lr_factor(0, 100, schedule, warmup=10) == pytest.approx(0.1)
    assert lr_factor(5, 100, schedule, warmup=10) == pytest.approx(0.55)
    # Cosine from 1 at iteration 10 to 0.2 at iteration 99, half way (0.6) at 54.5.
    assert lr_factor(10, 100, schedule, warmup=10) == pytest.approx(1.0)
    assert lr_factor(99, 100, schedule, warmup=10) == pytest.approx(0.2)
    middle = (lr_factor(54, 100, schedule, 10) + lr_factor(55, 100, schedule, 10)) / 2
    assert middle == pytest.approx(0.6, abs=1e-3)
    # Steps of 0.1 at 50 % and 75 % of the run.
    step = TrainSchedule(lr_schedule="step", step_milestones=(0.5, 0.75), step_gamma=0.1)
    values = [lr_factor(i, 100, step, warmup=0) for i in (0, 49, 50, 74, 75, 99)]
    assert values == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_lr_scheduler_follows_lr_factor_every_iteration():
    schedule = TrainSchedule(epochs=3, lr=0.5, warmup_epochs=0.5)
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, schedule)
    scheduler = build_lr_scheduler(optimizer, schedule, iterations_per_epoch=4)  # warm-up 2
    seen = []
    for _ in range(12):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    expected = [0.5 * lr_factor(i, 12, schedule, warmup=2) for i in range(12)]
    assert [lrs[0] for lrs in seen] == pytest.approx(expected)
    assert all(lrs[0] == lrs[1] for lrs in seen)  # both groups share the schedule
    assert seen[-1][0] == pytest.approx(0.5 * schedule.final_lr_fraction)


def test_warmup_bias_lr_gives_the_biases_their_own_falling_warm_up():
    # 12 iterations, warm-up 2 from 0.01 * 0.5; biases from 0.1 down to 0.5 * 1.
    schedule = TrainSchedule(epochs=3, lr=0.5, warmup_epochs=0.5, warmup_bias_lr=0.1)
    model = NormNet()
    optimizer = build_optimizer(model, schedule)
    names = [group["name"] for group in optimizer.param_groups]
    assert names == ["decay", "no_decay", "bias"]
    assert {id(p) for p in optimizer.param_groups[2]["params"]} == {id(model.linear.bias)}
    assert optimizer.param_groups[2]["weight_decay"] == 0.0
    scheduler = build_lr_scheduler(optimizer, schedule, iterations_per_epoch=4)
    seen = []
    for _ in range(4):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert [lrs[2] for lrs in seen[:3]] == pytest.approx([0.1, 0.3, 0.5])
    assert [lrs[0] for lrs in seen[:3]] == pytest.approx([0.005, 0.2525, 0.5])
    assert all(lrs[0] == lrs[1] for lrs in seen) and seen[3][2] == seen[3][0]
    assert lr_factor(0, 12, schedule, warmup=2, bias=True) == pytest.approx(0.2)
    # Without warmup_bias_lr the optimizer keeps its two groups.
    two = build_optimizer(model, schedule.replace(warmup_bias_lr=0.0))
    assert [group["name"] for group in two.param_groups] == ["decay", "no_decay"]
    groups = split_biases(parameter_groups(model, 0.1), model)
    split_count = sum(len(group["params"]) for group in groups)
    assert split_count == sum(len(group["params"]) for group in two.param_groups)


def test_recipe_says_each_ingredient_in_words():
    from detutils.engine.schedule import TrainSchedule

    sgd = TrainSchedule(epochs=280, lr_schedule="step", step_milestones=(240 / 280, 260 / 280))
    recipe = sgd.recipe()
    assert recipe["optimizer"] == "SGD, Nesterov momentum 0.937"
    assert recipe["decay"] == "x 0.1 at epochs 240, 260"
    assert recipe["length"] == "280 epochs" and recipe["time guard"] == "none"
    adamw = TrainSchedule(
        iterations=500, optimizer="adamw", momentum=0.9, max_minutes=8.75, lr_by_time=True,
        mosaic=1.0, amp=True, grad_clip=0.0,
    )  # fmt: skip
    recipe = adamw.recipe()
    assert recipe["optimizer"] == "AdamW, beta1 0.9" and recipe["length"] == "500 steps"
    assert recipe["augmentation"] == "flip, colour jitter, mosaic 1"
    assert recipe["gradient clipping"] == "none" and recipe["time guard"] == "8.75 min"
    assert TrainSchedule(augment=False).recipe()["augmentation"] == "none"


def test_a_warmup_in_steps_replaces_the_one_in_epochs():
    # mmdet's 1x: 500 steps from 0.001 lr, whatever the length of an epoch
    schedule = TrainSchedule(
        epochs=12, lr=1.0, warmup_epochs=1.0, warmup_iterations=500, warmup_start_factor=0.001,
        lr_schedule="step", step_milestones=(8 / 12, 11 / 12),
    )  # fmt: skip
    optimizer = build_optimizer(nn.Linear(2, 2), schedule)
    scheduler = build_lr_scheduler(optimizer, schedule, iterations_per_epoch=10_000)
    rates = []
    for _ in range(501):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.001) and rates[250] == pytest.approx(0.5005)
    assert rates[500] == pytest.approx(1.0)
    assert schedule.recipe()["warm-up"] == "500 steps from 0.001 lr"
    with pytest.raises(ValueError, match="warmup_iterations must be >= 0"):
        TrainSchedule(warmup_iterations=-1)


def test_lr_multipliers_split_the_groups_and_survive_a_checkpoint():
    model = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.Linear(3, 1))
    schedule = TrainSchedule(optimizer="adamw", lr=0.01, lr_multipliers=(("0.", 0.1),))
    optimizer = build_optimizer(model, schedule)
    by_name = {group["name"]: group for group in optimizer.param_groups}
    assert optimizer.param_groups[0]["name"] == "decay" and by_name["decay"]["lr"] == 0.01
    assert by_name["decay x0.1"]["lr"] == pytest.approx(0.001)  # the first Linear's weight
    assert by_name["no_decay x0.1"]["params"] == [model[0].bias]
    scheduler = build_lr_scheduler(optimizer, schedule, iterations_per_epoch=10)
    scheduler.step()
    ratio = by_name["decay x0.1"]["lr"] / by_name["decay"]["lr"]
    assert ratio == pytest.approx(0.1)  # the warm-up and cosine keep the factor
    assert TrainSchedule.from_dict(schedule.to_dict()) == schedule
    assert "x 0.1 for 0." in schedule.recipe()["learning rate"]
    with pytest.raises(ValueError, match="lr_multipliers"):
        TrainSchedule(lr_multipliers=(("backbone", 0.0),))
