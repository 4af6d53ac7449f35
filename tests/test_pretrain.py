"""Tests of the course's backbone pre-training: object crops, the stored file, loading."""

import dataclasses

import pytest
import torch

from detutils.data import CocoDetection, ObjectCrops, find_split, generate_shapes
from detutils.data.crops import crop_squares
from detutils.engine import pretrain
from detutils.engine.pretrain import (
    BackboneClassifier,
    ensure_backbone,
    load_pretrained,
    recipe_for,
)
from detutils.models import build_detector
from detutils.models.backbones import ResNetBackbone


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, train=12, val=4, size=96, seed=0, workers=1)
    return root


def test_crop_squares_keep_the_aspect_and_the_centre():
    boxes = torch.tensor([[40.0, 60, 100, 80], [0, 0, 10, 30]])
    squares = crop_squares(boxes, 1.5)
    torch.testing.assert_close(
        squares, torch.tensor([[25.0, 25, 115, 115], [-17.5, -7.5, 27.5, 37.5]])
    )


def test_object_crops_one_per_box_plus_background(shapes_root):
    dataset = CocoDetection(*find_split(shapes_root, "train"))
    crops = ObjectCrops(dataset, size=32, min_side=0.0, background_fraction=0.0)
    num_boxes = sum(len(dataset.load_target(i)["labels"]) for i in dataset.image_ids)
    assert len(crops) == num_boxes and crops.class_names[-1] == "background"
    image, label = crops[0]
    assert image.shape == (3, 32, 32) and 0 <= image.min() and image.max() <= 1
    assert 0 <= label < dataset.num_classes
    with_background = ObjectCrops(dataset, size=32, background_fraction=1.0, augment=False)
    assert (with_background.labels == dataset.num_classes).any()
    first, again = with_background[3][0], with_background[3][0]
    assert torch.equal(first, again)  # no augmentation: the same pixels every read


def test_object_crops_reject_bad_arguments_and_an_empty_set(shapes_root):
    dataset = CocoDetection(*find_split(shapes_root, "val"))
    with pytest.raises(ValueError, match="no box of at least"):
        ObjectCrops(dataset, min_side=1e6)
    with pytest.raises(ValueError, match="size >= 8"):
        ObjectCrops(dataset, size=4)


def test_ensure_backbone_trains_once_and_rebuilds_a_stale_file(shapes_root, tmp_path, capsys):
    path = ensure_backbone("shapes-resnet18-half", tmp_path, "ci", shapes_root, verbose=False)
    assert path.name == "shapes-resnet18-half-ci.pt"
    stored = torch.load(path, weights_only=True)
    assert stored["recipe"] == dataclasses.asdict(recipe_for("shapes-resnet18-half", "ci"))
    assert 0 <= stored["accuracy"] <= 1 and stored["losses"].shape == (4,)
    stamp = path.stat().st_mtime_ns
    ensure_backbone("shapes-resnet18-half", tmp_path, "ci", shapes_root)
    assert path.stat().st_mtime_ns == stamp and "pre-training" not in capsys.readouterr().out
    stored["recipe"]["steps"] = 3  # made with another recipe: rebuilt
    torch.save(stored, path)
    ensure_backbone("shapes-resnet18-half", tmp_path, "ci", shapes_root)
    assert "pre-training backbone" in capsys.readouterr().out
    assert torch.load(path, weights_only=True)["recipe"]["steps"] == 4


def test_the_stored_weights_load_into_the_detector(shapes_root, tmp_path, monkeypatch):
    path = ensure_backbone("shapes-resnet18-half", tmp_path, "ci", shapes_root, verbose=False)
    model = build_detector("atss-r18half-fpn64", num_classes=6)
    monkeypatch.setattr(pretrain, "ensure_backbone", lambda *args, **kwargs: path)
    source = load_pretrained(model, schedule="ci")
    assert source == "shapes-resnet18-half (shapes-resnet18-half-ci.pt)"
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(model.backbone.conv1.weight, stored["conv1.weight"])
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, stored["layer4.1.bn2.running_var"])


def test_load_pretrained_names_what_it_cannot_load(tmp_path):
    model = build_detector("atss-r18half-fpn64", num_classes=6)
    for spec, error, match in [
        (str(tmp_path / "missing.pth"), FileNotFoundError, "no such file"),
        ("torchvision:NoSuch_Weights.X", ValueError, "unknown weights"),
    ]:
        model.config = dataclasses.replace(model.config, pretrained=spec)
        with pytest.raises(error, match=match):
            load_pretrained(model)
    full_width = tmp_path / "resnet18.pth"
    torch.save(ResNetBackbone(18).state_dict(), full_width)
    model.config = dataclasses.replace(model.config, pretrained=str(full_width))
    with pytest.raises(ValueError, match="resnet18.pth: conv1.weight has shape"):
        load_pretrained(model)
    model.config = dataclasses.replace(model.config, pretrained=None)
    assert load_pretrained(model) is None
    with pytest.raises(ValueError, match="unknown course backbone"):
        recipe_for("shapes-resnet99")


def test_classifier_reads_images_in_zero_one():
    model = BackboneClassifier(18, 8, num_classes=7).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert model.features(torch.rand(2, 3, 32, 32)).shape == (2, 64)
