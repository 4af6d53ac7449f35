"""Tests of detutils.trace: one row per tensor, in call order, hooks always removed."""

import dataclasses
from typing import NamedTuple

import pytest
import torch
from torch import nn

from detutils import trace as trace_module
from detutils.trace import COLUMNS, record, trace, trace_calls


def tiny_classifier() -> nn.Sequential:
    # (2, 3, 8, 8) -conv 3x3 pad 1-> (2, 8, 8, 8) -pool 2-> (2, 8, 4, 4) -flatten-> (2, 128)
    # -linear-> (2, 10). Parameters: conv 8 * 3 * 3 * 3 + 8 = 224, linear 128 * 10 + 10 = 1290.
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10)
    )


class Block(nn.Module):
    """conv -> relu, with a head nested one level deeper: names "block.conv", ..."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(images))


def test_sequential_shapes_types_and_params():
    model = tiny_classifier()
    table, output = trace(model, torch.zeros(2, 3, 8, 8))
    assert list(table.columns) == COLUMNS
    assert table["name"].tolist() == ["(input)", "0", "1", "2", "3", "(output)"]
    assert table["type"].tolist() == [
        "input", "Conv2d", "MaxPool2d", "Flatten", "Linear", "Sequential"
    ]  # fmt: skip
    assert table["shape"].tolist() == [
        (2, 3, 8, 8), (2, 8, 8, 8), (2, 8, 4, 4), (2, 128), (2, 10), (2, 10)
    ]  # fmt: skip
    assert table["params"].tolist() == [0, 224, 0, 0, 1290, 1514]
    assert set(table["dtype"]) == {"float32"}
    assert table["item"].tolist() == ["[0]", "", "", "", "", ""]
    assert output.shape == (2, 10)


def test_table_equals_a_loop_over_the_children():
    # The same shapes, computed by running the children one by one.
    model = tiny_classifier()
    images = torch.rand(1, 3, 8, 8)
    table, output = trace(model, images, include_input=False)
    shapes, hidden = [], images
    for child in model:
        hidden = child(hidden)
        shapes.append(tuple(hidden.shape))
    assert table["shape"].tolist()[:-1] == shapes
    torch.testing.assert_close(output, hidden)


def test_nested_modules_depth_and_leaves():
    model = Block()
    images = torch.zeros(1, 3, 5, 5)
    table, _ = trace(model, images, include_input=False)
    # A parent returns after its children, so it follows them.
    assert table["name"].tolist() == ["block.0", "block.1", "block", "head", "(output)"]
    table, _ = trace(model, images, include_input=False, max_depth=1)
    assert table["name"].tolist() == ["block", "head", "(output)"]
    table, _ = trace(model, images, include_input=False, leaves_only=True)
    assert table["name"].tolist() == ["block.0", "block.1", "head", "(output)"]
    # block: conv 3 * 4 + 4 = 16, relu 0; head: 4 * 2 + 2 = 10.
    assert table.set_index("name")["params"].to_dict() == {
        "block.0": 16, "block.1": 0, "head": 10, "(output)": 26
    }  # fmt: skip


class Pair(NamedTuple):
    scores: torch.Tensor
    boxes: torch.Tensor


@dataclasses.dataclass
class Assigned:
    gt_index: torch.Tensor
    note: str


class ManyOutputs(nn.Module):
    def forward(self, images: torch.Tensor):
        batch = images.shape[0]
        return (
            images.mean(1),  # (B, H, W)
            {"cls": torch.zeros(batch, 3), "box": [torch.zeros(batch, 4), None]},
            Pair(torch.zeros(batch), torch.zeros(batch, 4)),
            Assigned(torch.zeros(batch, dtype=torch.long), "not a tensor: skipped"),
        )


def test_multiple_outputs_one_row_per_tensor():
    table, output = trace(ManyOutputs(), torch.zeros(2, 3, 4, 4), include_input=False)
    assert table["item"].tolist() == [
        "[0]", '[1]["cls"]', '[1]["box"][0]', "[2].scores", "[2].boxes", "[3].gt_index"
    ]  # fmt: skip
    assert table["shape"].tolist() == [(2, 4, 4), (2, 3), (2, 4), (2,), (2, 4), (2,)]
    assert table["dtype"].tolist()[-1] == "int64"
    assert set(table["name"]) == {"(output)"}
    assert isinstance(output[2], Pair)


class SharedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(images)[:, :, ::2, ::2])  # second call on half the size


def test_module_called_twice_appears_twice_with_a_counter():
    table, _ = trace(SharedTwice(), torch.zeros(1, 2, 8, 8), include_input=False)
    rows = table[table["name"] == "conv"]
    assert rows["call"].tolist() == [0, 1]
    assert rows["shape"].tolist() == [(1, 2, 8, 8), (1, 2, 4, 4)]


class Explodes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 3)
        self.second = nn.Linear(4, 4)  # a (B, 3) input makes this one raise

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        record("before_the_error", inputs)
        return self.second(self.first(inputs))


def test_hooks_removed_after_an_exception():
    model = Explodes()
    with pytest.raises(RuntimeError):
        trace(model, torch.zeros(2, 3))
    assert all(not module._forward_hooks for module in model.modules())
    assert trace_module._ACTIVE.get() is None  # record() is inert again
    # A later trace starts clean: no rows left over from the failed one.
    model.second = nn.Linear(3, 3)
    table, _ = trace(model, torch.zeros(2, 3), include_input=False)
    assert table["name"].tolist() == ["before_the_error", "first", "second", "(output)"]
    assert all(not module._forward_hooks for module in model.modules())


def test_no_grad_by_default_and_on_request():
    model = nn.Linear(3, 1)
    _, output = trace(model, torch.ones(2, 3))
    assert not output.requires_grad
    _, output = trace(model, torch.ones(2, 3), no_grad=False)
    assert output.requires_grad
    output.sum().backward()
    assert model.weight.grad is not None


def test_mode_is_left_as_it_was():
    model = tiny_classifier().train()
    trace(model, torch.zeros(1, 3, 8, 8))
    assert model.training
    model.eval()
    trace(model, torch.zeros(1, 3, 8, 8))
    assert not model.training


def squared_error(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    difference = record("difference", pred - target)  # (N, 4)
    record("terms", {"squared": difference**2, "weighted": weight[:, None] * difference**2})
    return (weight[:, None] * difference**2).sum()


def test_loss_function_inputs_records_and_output():
    pred, target = torch.zeros(5, 4), torch.ones(5, 4)
    table, loss = trace(squared_error, pred, target, kwargs={"weight": torch.ones(5)})
    assert table["name"].tolist() == [
        "(input)", "(input)", "(input)", "difference", "terms", "terms", "(output)"
    ]  # fmt: skip
    assert table["item"].tolist() == [
        "[0]", "[1]", '["weight"]', "", '["squared"]', '["weighted"]', ""
    ]  # fmt: skip
    assert table["shape"].tolist()[-1] == ()
    assert table["type"].tolist()[-1] == "squared_error"
    assert loss.item() == 20.0  # 5 x 4 entries, each (0 - 1)^2 with weight 1


def test_record_outside_a_trace_does_nothing():
    tensor = torch.arange(3)
    assert record("anything", tensor) is tensor
    with trace_calls() as recording:
        pass
    assert len(recording.table()) == 0


def test_trace_calls_collects_and_nests():
    with trace_calls() as outer:
        record("outer_first", torch.zeros(2))
        with trace_calls() as inner:
            record("inner", torch.zeros(3))
            record("inner", torch.zeros(4))
        record("outer_second", torch.zeros(5))
    assert outer.table()["name"].tolist() == ["outer_first", "outer_second"]
    assert inner.table()["call"].tolist() == [0, 1]
    assert inner.table()["shape"].tolist() == [(3,), (4,)]


class WithLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.criterion = nn.SmoothL1Loss()

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.criterion(pred, target)


def test_bound_method_hooks_the_owning_module():
    model = WithLoss()
    table, _ = trace(model.loss, torch.zeros(3), torch.ones(3), include_input=False)
    assert table["name"].tolist() == ["criterion", "(output)"]
    assert table["type"].tolist() == ["SmoothL1Loss", "WithLoss.loss"]
    assert all(not module._forward_hooks for module in model.modules())


def test_empty_tensors_and_tensorless_calls():
    table, _ = trace(nn.Identity(), torch.zeros(0, 4))
    assert table["shape"].tolist() == [(0, 4), (0, 4)]
    table, output = trace(lambda: 3)
    assert output == 3 and len(table) == 0 and list(table.columns) == COLUMNS


def test_bad_arguments_name_the_culprit():
    with pytest.raises(TypeError, match="fn"):
        trace(42, torch.zeros(1))
    with pytest.raises(ValueError, match="max_depth"):
        trace(nn.Identity(), torch.zeros(1), max_depth=0)
    with pytest.raises(TypeError, match="module"):
        trace(lambda x: x, torch.zeros(1), module="not a module")
    with trace_calls(), pytest.raises(ValueError, match="name"):
        record("", torch.zeros(1))
