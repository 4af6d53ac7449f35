"""Tests of the commands python -m detutils.train / evaluate / predict."""

import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_detector import TinyDetector

from detutils.data import generate_shapes
from detutils.engine.checkpoint import load_checkpoint, save_checkpoint
from detutils.engine.cli import evaluate_main, predict_main, train_main

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny_detector:build"  # tests/ is on sys.path under pytest


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, train=16, val=8, size=64, seed=0, workers=1)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """last.pt of a one-epoch ci run."""
    out = tmp_path_factory.mktemp("run")
    arguments = ["--model", MODEL, "--data", str(data), "--schedule", "ci", "--epochs", "1"]
    assert train_main(arguments + ["--out", str(out), "--quiet"]) == 0
    return out / "last.pt"


def one_line_error(capsys, status: int, expected: str) -> None:
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert expected in captured.err, captured.err


def test_train_reports_bad_arguments_in_one_line(data, trained, tmp_path, capsys, monkeypatch):
    base = ["--data", str(data), "--schedule", "ci", "--out", str(tmp_path)]
    one_line_error(capsys, train_main(["--model", "nope"] + base), "unknown model 'nope'")
    status = train_main(["--model", "tiny_detector:nope"] + base)
    one_line_error(capsys, status, "tiny_detector has no callable nope")
    status = train_main(["--model", MODEL, "--data", str(tmp_path / "nowhere")])
    one_line_error(capsys, status, f"data directory {tmp_path / 'nowhere'} not found")
    status = train_main(["--model", MODEL, "--data", str(tmp_path)])
    one_line_error(capsys, status, "no 'train' split under")
    one_line_error(
        capsys, train_main(["--model", MODEL, "--epochs", "0"] + base), "epochs must be >= 1"
    )
    other = save_checkpoint({"model_name": "yolov8n", "num_classes": 6}, tmp_path / "other.pt")
    status = train_main(["--model", MODEL, "--resume", str(other)] + base)
    one_line_error(capsys, status, "holds model 'yolov8n', not 'tiny'")
    three = save_checkpoint({"model_name": "tiny", "num_classes": 3}, tmp_path / "three.pt")
    status = train_main(["--model", MODEL, "--resume", str(three)] + base)
    one_line_error(capsys, status, f"checkpoint {three} has 3 classes, {data} 6")
    if not torch.cuda.is_available():
        status = train_main(["--model", MODEL, "--device", "cuda"] + base)
        one_line_error(capsys, status, "no CUDA GPU")
    monkeypatch.setenv("DETUTILS_SCHEDULE", "fast")
    status = train_main(["--model", MODEL, "--data", str(data)])
    one_line_error(capsys, status, "DETUTILS_SCHEDULE='fast' is not a schedule")


def test_evaluate_and_predict_report_bad_arguments(data, trained, tmp_path, capsys):
    other = save_checkpoint({"model_name": "yolov8n", "num_classes": 6}, tmp_path / "other.pt")
    base = ["--model", MODEL, "--data", str(data)]
    one_line_error(capsys, evaluate_main(base + ["--ckpt", str(other)]), "holds model 'yolov8n'")
    (tmp_path / "empty.pt").write_bytes(b"")
    status = evaluate_main(base + ["--ckpt", str(tmp_path / "empty.pt")])
    one_line_error(capsys, status, "empty.pt is not a readable checkpoint")
    status = evaluate_main(base + ["--ckpt", str(trained), "--split", "test"])
    one_line_error(capsys, status, "no 'test' split")
    image = ["--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "out.png")]
    status = predict_main(["--model", MODEL, "--ckpt", str(trained)] + image)
    one_line_error(capsys, status, "missing.png not found")
    (tmp_path / "text.png").write_text("not an image")
    image[1] = str(tmp_path / "text.png")
    status = predict_main(["--model", MODEL, "--ckpt", str(trained)] + image)
    one_line_error(capsys, status, "cannot be read as an image")


def test_resume_continues_a_run(data, tmp_path, capsys):
    base = ["--model", MODEL, "--data", str(data), "--schedule", "ci", "--out", str(tmp_path)]
    assert train_main(base + ["--epochs", "1", "--quiet"]) == 0
    first = load_checkpoint(tmp_path / "last.pt")
    assert (first["epoch"], first["iteration"]) == (1, 4)
    assert train_main(base + ["--epochs", "2", "--resume", str(tmp_path / "last.pt")]) == 0
    second = load_checkpoint(tmp_path / "last.pt")
    assert (second["epoch"], second["iteration"]) == (2, 8)
    assert second["schedule"]["epochs"] == 2 and second["class_names"][0] == "ellipse"
    assert len((tmp_path / "train_log.csv").read_text().splitlines()) == 1 + 8
    assert "2 epochs, 8 iterations" in capsys.readouterr().out


def test_non_finite_loss_ends_the_command(data, tmp_path, capsys, monkeypatch):
    def nan_loss(self, outputs, targets):
        loss = outputs.sum() * math.nan
        return {"loss": loss, "loss_cls": loss, "loss_box": outputs.sum() * 0 + 0.25}

    monkeypatch.setattr(TinyDetector, "loss", nan_loss)
    arguments = ["--model", MODEL, "--data", str(data), "--schedule", "ci", "--out", str(tmp_path)]
    assert train_main(arguments) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "non-finite loss at epoch 1, iteration 1: loss=nan, loss_box=0.25, loss_cls=nan" in error
    assert not (tmp_path / "last.pt").exists()


def run_module(module: str, arguments: list[str], capsys) -> str:
    """``python -m module arguments`` inside this process; returns what it printed."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [module, *arguments])
        with pytest.raises(SystemExit) as exit_status:
            runpy.run_module(module, run_name="__main__")
    output = capsys.readouterr()
    assert exit_status.value.code == 0, output.err
    return output.out


def test_train_evaluate_predict_from_the_command_line(data, tmp_path, capsys):
    # Training as a user types it, from the repository root, in a fresh process ...
    run = tmp_path / "run"
    completed = subprocess.run(
        [sys.executable, "-m", "detutils.train", "--model", "tests.tiny_detector:build",
         "--data", str(data), "--schedule", "ci", "--out", str(run)],
        cwd=REPO_ROOT, env=dict(os.environ, CI="true", OMP_NUM_THREADS="1"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "2 epochs, 8 iterations" in completed.stdout and (run / "last.pt").is_file()
    # ... then evaluate and predict through their `python -m` entry points, in this one.
    checkpoint = ["--model", MODEL, "--ckpt", str(run / "last.pt")]
    output = run_module("detutils.evaluate", checkpoint + ["--data", str(data)], capsys)
    assert "val (8 images)" in output and "AP50" in output and "hexagon" in output
    image = data / "images" / "val" / "000001.png"
    picture = tmp_path / "prediction.png"
    arguments = ["--image", str(image), "--out", str(picture), "--score-thr", "0", "--max-det", "5"]
    output = run_module("detutils.predict", checkpoint + arguments, capsys)
    assert "5 detections drawn to" in output
    with Image.open(picture) as drawn:
        assert drawn.format == "PNG" and drawn.size == (200, 224)  # 64 px shown at 200 px


def test_train_says_in_one_line_when_imagenet_weights_cannot_be_had(
    data, tmp_path, capsys, monkeypatch
):
    # atss-r50 names torchvision's ImageNet ResNet-50, as mmdet's config does; offline
    # and not in torch's cache, the command says so and how to train without them
    from torchvision.models import ResNet50_Weights

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(type(ResNet50_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    base = ["--data", str(data), "--schedule", "ci", "--out", str(tmp_path), "--quiet"]
    status = train_main(["--model", "atss-r50"] + base)
    one_line_error(capsys, status, "cannot load torchvision's ResNet50_Weights.IMAGENET1K_V1")
