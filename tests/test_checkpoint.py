"""Tests of detutils.engine.checkpoint, and of resuming a killed run bit for bit."""

import importlib
import random

import numpy as np
import pytest
import torch
from tiny_detector import build

from detutils.data import CocoDetection, build_transforms, find_split, generate_shapes
from detutils.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    inference_state_dict,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

# The module, not the function ``detutils.engine.train`` that the package exports.
train_module = importlib.import_module("detutils.engine.trainer")


def test_save_and_load_round_trip(tmp_path):
    state = {"model_name": "tiny", "epoch": 3, "model": {"w": torch.arange(4.0)}, "ema": None}
    path = save_checkpoint(state, tmp_path / "runs" / "last.pt")
    loaded = load_checkpoint(path, model_name="tiny")
    assert loaded["format"] == CHECKPOINT_FORMAT and loaded["epoch"] == 3
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left
    assert inference_state_dict(loaded) is loaded["model"]
    loaded["ema"] = {"model": {"w": torch.zeros(4)}, "updates": 5}
    assert inference_state_dict(loaded) is loaded["ema"]["model"]


def test_failed_write_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    path = save_checkpoint({"model_name": "tiny", "epoch": 1}, tmp_path / "last.pt")
    before = path.read_bytes()

    def crash(obj, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed in the middle of the write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model_name": "tiny", "epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Payload:
    """An arbitrary class: unpickling it would run code that ``weights_only`` forbids."""


def test_wrong_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt not found"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt is not a readable checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)  # someone else's checkpoint
    with pytest.raises(CheckpointError, match="foreign.pt is not a detutils checkpoint"):
        load_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "object": Payload()}, pickled)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(pickled)  # weights_only refuses arbitrary objects
    other = save_checkpoint({"model_name": "yolov8n"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="holds model 'yolov8n', not 'tiny'"):
        load_checkpoint(other, model_name="tiny")


def draw_three():
    """One number from each global generator: those that a checkpoint saves."""
    return random.random(), float(np.random.rand())  # noqa: NPY002, float(torch.rand(()))


def test_rng_state_survives_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002
    torch.manual_seed(3)
    np.random.randn()  # noqa: NPY002 -- leaves a cached Gaussian in the state
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = draw_three() + (float(np.random.randn()),)  # noqa: NPY002
    draw_three()
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert draw_three() + (float(np.random.randn()),) == expected  # noqa: NPY002


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, train=16, val=4, size=64, seed=0, workers=1)
    return CocoDetection(*find_split(root, "train"), transforms=build_transforms(64, True))


def two_epochs(train_set, out_dir, workers, resume=None):
    """Two epochs of the tiny detector with EMA and augmentation (random flips, jitter)."""
    train_module.seed_everything(0)
    model = build(train_set.num_classes)
    schedule = model.config.schedules["ci"].replace(epochs=2, ema=True, workers=workers)
    return train_module.train(
        model, train_set, schedule, out_dir=out_dir, resume=resume, progress=False
    )


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_is_bit_identical(train_set, tmp_path, monkeypatch, workers):
    straight = two_epochs(train_set, tmp_path / "straight", workers)
    # The second run is killed right after its epoch-1 checkpoint, then resumed from it.
    honest_save = train_module.save_checkpoint

    def save_then_die(state, path):
        honest_save(state, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        two_epochs(train_set, tmp_path / "killed", workers)
    monkeypatch.setattr(train_module, "save_checkpoint", honest_save)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 1
    resumed = two_epochs(train_set, tmp_path / "killed", workers, tmp_path / "killed" / "last.pt")
    assert resumed.iterations == straight.iterations == 8
    for model in ("model", "ema_model"):
        expected = getattr(straight, model).state_dict()
        for name, value in getattr(resumed, model).state_dict().items():
            assert torch.equal(value, expected[name]), f"{model} {name}"
    logs = [(tmp_path / run / "train_log.csv").read_text() for run in ("straight", "killed")]
    assert logs[0] == logs[1]  # the resumed log holds every iteration once
