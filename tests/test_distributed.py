"""Tests of DistributedDataParallel training: two CPU processes talking through gloo.

The test starts ``python -m torch.distributed.run --standalone --nproc_per_node=2`` on
this very file; each process trains the tiny detector on its half of every batch (2
images) and saves its final weights. One process with batches of 4 is the reference:
DDP averages the two ranks' gradients, each the mean over its 2 images, which is the
mean over the 4 images that the single process sees at the same step (the tiny
detector's loss is a per-image mean and has no batch statistics).
"""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_detector import build

from detutils.data import CocoDetection, build_transforms, find_split, generate_shapes
from detutils.engine.trainer import seed_everything, train

RANKS = 2
BATCH_PER_RANK = 2


def torchrun(*args: str) -> None:
    """Run this file under ``torch.distributed.run`` with RANKS gloo processes."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={RANKS}", __file__, *args,
    ]  # fmt: skip
    environment = dict(os.environ, OMP_NUM_THREADS="1", CI="true")
    completed = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=240
    )
    assert completed.returncode == 0, completed.stderr[-4000:]


def datasets(root: Path):
    """Train and val sets without augmentation: both runs must see the same pixels."""
    transforms = build_transforms(64, train=False)
    train_set = CocoDetection(*find_split(root, "train"), transforms=transforms)
    val_set = CocoDetection(*find_split(root, "val"), transforms=transforms)
    return train_set, val_set


def run(root: Path, out_dir: Path | None, batch_size: int):
    train_set, val_set = datasets(root)
    seed_everything(0)
    model = build(train_set.num_classes)
    schedule = model.config.schedules["ci"].replace(
        epochs=2, batch_size=batch_size, ema=True, ema_tau=2.0
    )
    return train(model, train_set, schedule, val_set=val_set, out_dir=out_dir, progress=False)


def rank_main(root: Path, out: Path) -> None:
    """What each process launched by torchrun does."""
    result = run(root, out / "run", BATCH_PER_RANK)
    rank = torch.distributed.get_rank()
    torch.save(
        {
            "model": result.model.state_dict(),
            "ema": result.ema_model.state_dict(),
            "metrics": result.metrics,
            "world_size": torch.distributed.get_world_size(),
        },
        out / f"rank{rank}.pt",
    )
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    root = tmp_path / "shapes"
    generate_shapes(root, train=16, val=8, size=64, seed=0, workers=1)
    out = tmp_path / "ddp"
    out.mkdir()
    torchrun(str(root), str(out))

    ranks = [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(RANKS)]
    assert [state["world_size"] for state in ranks] == [RANKS, RANKS]
    single = run(root, tmp_path / "single", RANKS * BATCH_PER_RANK)
    for name, expected in single.model.state_dict().items():
        assert torch.equal(ranks[0]["model"][name], ranks[1]["model"][name]), name
        assert torch.equal(ranks[0]["ema"][name], ranks[1]["ema"][name]), name
        torch.testing.assert_close(ranks[0]["model"][name], expected, rtol=1e-4, atol=1e-5)
    # Metrics: computed once from the detections of both ranks, the same everywhere.
    assert ranks[0]["metrics"] == pytest.approx(ranks[1]["metrics"], rel=0, abs=0, nan_ok=True)
    for name, value in single.metrics.items():
        assert ranks[0]["metrics"][name] == pytest.approx(value, abs=1e-3, nan_ok=True), name
    # Only rank 0 wrote the run folder; its log holds each iteration once, with the loss
    # averaged over the ranks, which is the single process's loss.
    assert sorted(path.name for path in (out / "run").iterdir()) == [
        "eval_log.csv",
        "last.pt",
        "train_log.csv",
    ]
    ddp_log = pd.read_csv(out / "run" / "train_log.csv")
    single_log = pd.read_csv(tmp_path / "single" / "train_log.csv")
    assert ddp_log["iteration"].tolist() == list(range(1, 9))
    torch.testing.assert_close(
        torch.tensor(ddp_log["loss"].to_numpy()),
        torch.tensor(single_log["loss"].to_numpy()),
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip


def _atss_case(images: slice):
    """The head outputs and targets of test_atss_model's three-image case, some images."""
    from test_atss_model import _bare, _small_case

    outputs, targets = _small_case()
    outputs = tuple([level[images] for level in maps] for maps in outputs)
    return _bare(3), outputs, targets[images]


def atss_rank_main(out: Path) -> None:
    """Each rank computes the ATSS loss of its images: rank 0 images 0 and 1, rank 1 the
    image without a box."""
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    model, outputs, targets = _atss_case(slice(0, 2) if rank == 0 else slice(2, 3))
    losses = model.loss(outputs, targets)
    torch.save({name: value.item() for name, value in losses.items()}, out / f"atss{rank}.pt")
    torch.distributed.destroy_process_group()


def test_atss_loss_normalisers_are_averaged_over_processes(tmp_path):
    # The focal and centerness terms are divided by the positives, the GIoU term by the
    # sum of the centerness targets, each averaged over the processes (mmdet's
    # reduce_mean): then the mean of the ranks' losses, what DDP's averaged gradients
    # follow, is the loss of the whole batch in one process.
    torchrun("atss-loss", str(tmp_path))
    ranks = [torch.load(tmp_path / f"atss{rank}.pt", weights_only=True) for rank in range(RANKS)]
    model, outputs, targets = _atss_case(slice(0, 3))
    whole = model.loss(outputs, targets)
    for name in ("cls", "bbox", "centerness", "loss"):
        mean = sum(rank[name] for rank in ranks) / RANKS
        assert mean == pytest.approx(whole[name].item(), rel=1e-5), name
    alone = _atss_case(slice(0, 2))
    assert ranks[0]["cls"] != pytest.approx(alone[0].loss(*alone[1:])["cls"].item(), rel=1e-3)


def _faster_rcnn_grads(rank: int, distributed: bool) -> dict[str, torch.Tensor]:
    """The gradients of a small Faster R-CNN after one loss on rank ``rank``'s images."""
    from test_faster_rcnn_model import _model

    torch.manual_seed(0)
    model = _model(rpn_num=64, roi_num=16).train()
    network = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    generator = torch.Generator().manual_seed(rank)
    images = torch.rand(2, 3, 64, 64, generator=generator)
    corners = torch.rand(2, 2, 2, generator=generator) * 30
    targets = [
        {"boxes": torch.cat([c, c + 20 + 10 * rank], dim=1), "labels": torch.tensor([0, 2])}
        for c in corners
    ]
    torch.manual_seed(100 + rank)  # the samplers' draws
    losses = model.loss(network(images), targets)  # the RoI head runs outside forward
    losses["loss"].backward()
    names = ("backbone.conv1.weight", "rpn_head.rpn_conv.weight", "roi_head.box_head.fc_cls.weight")
    parameters = dict(model.named_parameters())
    return {name: parameters[name].grad.clone() for name in names}


def faster_rcnn_rank_main(out: Path) -> None:
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    torch.save(_faster_rcnn_grads(rank, distributed=True), out / f"frcnn{rank}.pt")
    torch.distributed.destroy_process_group()


def test_faster_rcnn_gradients_are_averaged_over_processes(tmp_path):
    # Faster R-CNN runs its RoI head in the loss, after DDP's forward: DDP must still
    # average those gradients, as it does the backbone's.
    torchrun("faster-rcnn", str(tmp_path))
    ranks = [torch.load(tmp_path / f"frcnn{rank}.pt", weights_only=True) for rank in range(RANKS)]
    alone = [_faster_rcnn_grads(rank, distributed=False) for rank in range(RANKS)]
    for name, grad in ranks[0].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(ranks[1][name], grad, msg=name)
        mean = (alone[0][name] + alone[1][name]) / 2
        torch.testing.assert_close(grad, mean, rtol=1e-4, atol=1e-6, msg=name)


if __name__ == "__main__":  # launched by torchrun from the tests above
    torch.set_num_threads(1)
    if sys.argv[1] == "atss-loss":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        atss_rank_main(Path(sys.argv[2]))
    elif sys.argv[1] == "faster-rcnn":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        faster_rcnn_rank_main(Path(sys.argv[2]))
    else:
        rank_main(Path(sys.argv[1]), Path(sys.argv[2]))
