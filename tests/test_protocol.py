"""The detector protocol: ``assign``, then ``loss(outputs, targets, assignment)``.

Every detector of the course answers the same four calls, so one trainer, one evaluator
and one assigner-comparison notebook serve them all::

    outputs = model(images); assignment = model.assign(outputs, targets)
    losses = model.loss(outputs, targets, assignment); dets = model.predict(outputs)
"""

import pytest
import torch

from detutils.models import DETECTORS, build_detector

SMALL = ["yolov3-tiny", "nanodet-m", "yolov8n"]  # one of each family; the tests are per family

# Two 64 px images: a medium and a small box, then a large one (64 is a multiple of 32).
TARGETS = [
    {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0], [44.0, 40.0, 52.0, 50.0]]),
     "labels": torch.tensor([0, 2])},
    {"boxes": torch.tensor([[2.0, 4.0, 60.0, 58.0]]), "labels": torch.tensor([1])},
]  # fmt: skip
OTHER_TARGETS = [
    {"boxes": torch.tensor([[30.0, 2.0, 62.0, 20.0]]), "labels": torch.tensor([1])},
    {"boxes": torch.tensor([[10.0, 30.0, 26.0, 60.0]]), "labels": torch.tensor([0])},
]  # fmt: skip


def _outputs(name: str):
    torch.manual_seed(0)
    model = build_detector(name, num_classes=3).train()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return model, model(images)


def test_every_detector_has_the_four_calls():
    for name in DETECTORS:
        with torch.device("meta"):
            model = build_detector(name, num_classes=3)
        for call in ("forward", "assign", "loss", "predict"):
            assert callable(getattr(model, call, None)), f"{name} has no {call}"


@pytest.mark.parametrize("name", SMALL)
def test_loss_of_an_assignment_equals_the_loss_that_assigns(name):
    model, outputs = _outputs(name)
    assignment = model.assign(outputs, TARGETS)
    given = model.loss(outputs, TARGETS, assignment)
    assigned = model.loss(outputs, TARGETS)
    assert given.keys() == assigned.keys() and "loss" in given
    for key in given:
        assert torch.equal(given[key], assigned[key]), key
    given["loss"].backward()  # the loss still reaches the weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", SMALL)
def test_the_loss_follows_the_assignment_it_is_given(name):
    # The assignment made for other boxes gives another loss: the argument is used.
    model, outputs = _outputs(name)
    own = model.loss(outputs, TARGETS)["loss"]
    other = model.loss(outputs, TARGETS, model.assign(outputs, OTHER_TARGETS))["loss"]
    assert not torch.isclose(own, other)


@pytest.mark.parametrize("name", SMALL)
def test_assign_takes_no_gradient_and_checks_the_batch(name):
    model, outputs = _outputs(name)
    assignment = model.assign(outputs, TARGETS)
    tensors = [value for value in _flatten(assignment) if isinstance(value, torch.Tensor)]
    assert tensors and not any(tensor.requires_grad for tensor in tensors)
    with pytest.raises(ValueError, match="targets for a batch of 2"):
        model.assign(outputs, TARGETS[:1])


def _flatten(value):
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten(item)
    else:
        yield value
