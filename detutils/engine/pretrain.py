"""Backbones pre-trained by the course, where the references load ImageNet weights.

ATSS, Faster R-CNN, Deformable DETR and Co-DETR all start from a ResNet-50 trained on
ImageNet. Those weights are a download, and from random weights these detectors learn
next to nothing in the minutes a CPU gives them. So the course trains its own: the
backbone of the CPU presets classifies crops of the shapes set's objects (and
background patches; :class:`detutils.data.ObjectCrops`), a few minutes on a laptop CPU,
and its weights are stored under ``data/backbones/`` (git-ignored, rebuilt when
missing, like the shapes set). Notebook 04 walks through it.

    path = ensure_backbone("shapes-resnet18-half")        # trains it the first time
    load_pretrained(model)          # what the trainer does with model.config.pretrained

``model.config.pretrained`` names the weights a detector's training starts from:

    "shapes-resnet18-half"   the course's (``BACKBONES``), built by ``ensure_backbone``
    "torchvision:ResNet50_Weights.IMAGENET1K_V1"   torchvision's ImageNet weights, read
                             from torch's cache (``$TORCH_HOME/hub/checkpoints``), or
                             downloaded where the machine is online
    a path to a file         a ResNet state dict (torchvision's names)

A recipe says how long the pre-training runs: ``cpu`` (the default: minutes) or ``ci``
(seconds, for the tests; stored in its own file).

Run ``python -m detutils.engine.pretrain [name]`` to build the weights ahead of time.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from detutils import current_schedule
from detutils.distributed import barrier
from detutils.models.backbones import ResNetBackbone

__all__ = [
    "BACKBONES",
    "BackboneClassifier",
    "PretrainedWeightsError",
    "PretrainRecipe",
    "backbone_path",
    "ensure_backbone",
    "load_pretrained",
    "pretrain_backbone",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the detectors normalise with these; so does this
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsError(RuntimeError):
    """The backbone weights a config names cannot be had (offline, not in the cache)."""


@dataclass(frozen=True)
class PretrainRecipe:
    """Every number of a pre-training run (what the stored file is checked against)."""

    depth: int = 18  # ResNet depth
    width: int = 32  # channels of the first stage (64: torchvision's)
    crop_size: int = 64  # side of the object crops, px
    steps: int = 1500  # optimizer steps
    batch_size: int = 128
    lr: float = 0.002  # AdamW peak, after 5 % warm-up, cosine to 1 %
    weight_decay: float = 0.05
    max_images: int = 0  # images of the shapes set to crop (0: all)
    threads: int = 2
    seed: int = 0


# Name -> (depth, width) of the course's pre-trained backbones.
BACKBONES: dict[str, tuple[int, int]] = {"shapes-resnet18-half": (18, 32)}


def recipe_for(name: str, schedule: str | None = None) -> PretrainRecipe:
    """The recipe of backbone ``name`` for a schedule (``ci``: seconds; else minutes)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown course backbone {name!r}; known: {', '.join(BACKBONES)}")
    depth, width = BACKBONES[name]
    schedule = schedule or current_schedule()
    if schedule == "ci":
        return PretrainRecipe(depth, width, steps=4, batch_size=16, max_images=40, threads=1)
    return PretrainRecipe(depth, width)


class BackboneClassifier(nn.Module):
    """A ResNet backbone, global average pooling and a linear classifier.

    Images (B, 3, S, S) RGB in [0, 1] are normalised with the ImageNet mean and standard
    deviation, as the detectors do, so the features carry over unchanged.
    """

    def __init__(self, depth: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(depth, out_stages=(5,), width=width)
        self.fc = nn.Linear(self.backbone.out_channels[0], num_classes)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    def features(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, channels) pooled stage-5 features."""
        normalised = (images - self.pixel_mean) / self.pixel_std
        return self.backbone(normalised)[0].mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, classes) logits."""
        return self.fc(self.features(images))


def backbone_path(
    name: str, root: str | Path = "data/backbones", schedule: str | None = None
) -> Path:
    """Where backbone ``name`` is stored (``<name>.pt``; ``<name>-ci.pt`` for ``ci``)."""
    from detutils.data.shapes import resolve_root

    schedule = schedule or current_schedule()
    suffix = "-ci" if schedule == "ci" else ""
    return resolve_root(root) / f"{name}{suffix}.pt"


@torch.no_grad()
def crop_accuracy(model: BackboneClassifier, crops, batch_size: int = 256) -> tuple[float, Tensor]:
    """Top-1 accuracy on a crop set and its (K, K) confusion matrix (rows: true class)."""
    model.eval()
    num_classes = len(crops.class_names)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for start in range(0, len(crops), batch_size):
        batch = [crops[index] for index in range(start, min(start + batch_size, len(crops)))]
        images = torch.stack([image for image, _ in batch])
        labels = torch.tensor([label for _, label in batch])
        predicted = model(images).argmax(dim=1)
        confusion += torch.bincount(
            labels * num_classes + predicted, minlength=num_classes**2
        ).view(num_classes, num_classes)
    return float(confusion.diag().sum() / confusion.sum()), confusion


def pretrain_backbone(
    recipe: PretrainRecipe,
    shapes_root: str | Path = "data/shapes",
    progress: bool = True,
) -> dict:
    """Train a ResNet to classify object crops of the shapes set; return what is stored.

    Returns:
        ``{"state_dict": backbone weights (torchvision names, no fc), "classifier":
        fc weights, "recipe": asdict(recipe), "class_names": [...], "accuracy": val
        top-1, "confusion": (K, K), "losses": per-step training loss, "minutes": float}``.
    """
    from detutils.data import CocoDetection, ObjectCrops, ensure_shapes, find_split

    root = ensure_shapes(shapes_root, verbose=progress)
    started = time.monotonic()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        train_set = CocoDetection(*find_split(root, "train"))
        val_set = CocoDetection(*find_split(root, "val"))
        if recipe.max_images:
            train_set.image_ids = train_set.image_ids[: recipe.max_images]
            val_set.image_ids = val_set.image_ids[: max(recipe.max_images // 4, 1)]
        train_crops = ObjectCrops(train_set, recipe.crop_size, seed=recipe.seed)
        val_crops = ObjectCrops(val_set, recipe.crop_size, augment=False, seed=recipe.seed + 1)
        torch.manual_seed(recipe.seed)
        model = BackboneClassifier(recipe.depth, recipe.width, len(train_crops.class_names))
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
        warmup = max(1, round(0.05 * recipe.steps))

        def factor(step: int) -> float:  # linear warm-up, then a cosine to 1 %
            if step < warmup:
                return (step + 1) / warmup
            progress_ = (step - warmup) / max(1, recipe.steps - warmup)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress_))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        generator = torch.Generator().manual_seed(recipe.seed)
        loader = torch.utils.data.DataLoader(
            train_crops, recipe.batch_size, shuffle=True, drop_last=True, generator=generator
        )
        losses: list[float] = []
        model.train()
        while len(losses) < recipe.steps:
            for images, labels in loader:
                loss = F.cross_entropy(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                if progress and len(losses) % 250 == 0:
                    print(f"pre-training step {len(losses)}/{recipe.steps}: loss {loss:.3f}")
                if len(losses) == recipe.steps:
                    break
        accuracy, confusion = crop_accuracy(model, val_crops)
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "state_dict": model.backbone.state_dict(),
        "classifier": model.fc.state_dict(),
        "recipe": asdict(recipe),
        "class_names": train_crops.class_names,
        "accuracy": accuracy,
        "confusion": confusion,
        "losses": torch.tensor(losses),
        "minutes": (time.monotonic() - started) / 60,
    }


def ensure_backbone(
    name: str,
    root: str | Path = "data/backbones",
    schedule: str | None = None,
    shapes_root: str | Path = "data/shapes",
    verbose: bool = True,
) -> Path:
    """The file of course backbone ``name``, pre-trained first if missing or stale.

    The file records its recipe; one made with another recipe (another width, more
    steps) is rebuilt. Under DDP only rank 0 trains; the others wait for the file.

    Returns:
        the path of ``<name>.pt`` (``<name>-ci.pt`` on the ``ci`` schedule).
    """
    schedule = schedule or current_schedule()
    recipe = recipe_for(name, schedule)
    path = backbone_path(name, root, schedule)
    is_main = not dist.is_initialized() or dist.get_rank() == 0
    if is_main and _stored_recipe(path) != asdict(recipe):
        if verbose:
            print(f"pre-training backbone {name} on the shapes set ({recipe.steps} steps)")
        state = pretrain_backbone(recipe, shapes_root, progress=verbose)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".pt.part")
        torch.save(state, temporary)
        temporary.replace(path)
        if verbose:
            print(
                f"backbone {name}: crop accuracy {state['accuracy']:.3f} after "
                f"{state['minutes']:.1f} min"
            )
    barrier()
    return path


def _stored_recipe(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("recipe")
    except Exception:  # a truncated or foreign file: rebuild it
        return None


def _imagenet_state_dict(spec: str) -> dict:
    """torchvision weights by enum name (``ResNet50_Weights.IMAGENET1K_V1``)."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(spec)
    except (ValueError, KeyError, AttributeError) as error:
        raise ValueError(f"pretrained='torchvision:{spec}': unknown weights ({error})") from None
    try:
        return weights.get_state_dict(progress=False)
    except Exception as error:  # offline and not in torch's cache
        raise PretrainedWeightsError(
            f"cannot load torchvision's {spec} ({type(error).__name__}: {error}). Put the "
            f"file {Path(weights.url).name} in $TORCH_HOME/hub/checkpoints, or train "
            "without it: train(..., pretrained=False), or --no-pretrained"
        ) from None


def load_pretrained(
    model: nn.Module, schedule: str | None = None, verbose: bool = True
) -> str | None:
    """Load the backbone weights that ``model.config.pretrained`` names (see the module
    docstring); return what was loaded (a name and a file name, no folder), or None when
    it names none."""
    spec = getattr(getattr(model, "config", None), "pretrained", None)
    if not spec:
        return None
    if spec in BACKBONES:
        path = ensure_backbone(spec, schedule=schedule, verbose=verbose)
        stored = torch.load(path, map_location="cpu", weights_only=True)
        state_dict, source = stored["state_dict"], f"{spec} ({path.name})"
    elif spec.startswith("torchvision:"):
        source = spec
        state_dict = _imagenet_state_dict(spec.partition(":")[2])
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained={spec!r}: no such file")
        state_dict, source = torch.load(path, map_location="cpu", weights_only=True), path.name
        state_dict = state_dict.get("state_dict", state_dict)
    model.load_backbone(state_dict, source)
    return source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pre-train the course's backbones")
    parser.add_argument("names", nargs="*", default=list(BACKBONES))
    parser.add_argument("--root", default="data/backbones")
    args = parser.parse_args(argv)
    for name in args.names:
        print(ensure_backbone(name, args.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
