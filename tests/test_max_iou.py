"""The max-IoU assigner and the random sampler against mmdet 3.3's MaxIoUAssigner and
RandomSampler (values computed by mmdet on the same boxes, kept here)."""

import pytest
import torch

from detutils.assigners import (
    BACKGROUND,
    IGNORE,
    AssignResult,
    assign_max_iou,
    assign_max_iou_batched,
    pad_ground_truth,
    sample_random,
)

PRIORS = torch.tensor([
    [0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [0.0, 10.0, 10.0, 20.0],
    [5.0, 5.0, 15.0, 15.0], [20.0, 20.0, 40.0, 40.0], [22.0, 22.0, 42.0, 42.0],
    [50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 100.0, 100.0], [30.0, 30.0, 31.0, 31.0],
    [60.0, 0.0, 70.0, 10.0],
])  # fmt: skip
GT_BOXES = torch.tensor([
    [0.0, 0.0, 10.0, 9.0],     # IoU 0.9 with prior 0
    [20.0, 20.0, 41.0, 41.0],  # IoU 0.907 with prior 4, 0.752 with prior 5
    [25.0, 25.0, 35.0, 35.0],  # IoU 0.25 with priors 4 and 5 alike: a tie
    [80.0, 80.0, 82.0, 82.0],  # overlaps only prior 7, by 0.0004
    [10.0, 0.0, 20.0, 10.0],   # equals prior 1
])  # fmt: skip
GT_LABELS = torch.tensor([3, 1, 4, 0, 2])

# mmdet's gt_inds (0 negative, i + 1 box i, -1 ignored) for (pos, neg, min_pos, low quality)
MMDET_GT_INDS = {
    (0.7, 0.3, 0.3, True): [1, 5, 0, 0, 2, 2, 0, 0, 0, 0],
    (0.5, 0.5, 0.5, False): [1, 5, 0, 0, 2, 2, 0, 0, 0, 0],
    # min_pos_iou 0: box 3 claims prior 7 by 0.0004 although box 1 overlaps it more
    (0.5, 0.4, 0.0, True): [1, 5, 0, 0, 3, 3, 0, 4, 0, 0],
    # box 2 claims both priors of its tie and takes prior 4 from box 1, which is left
    # with no positive at all: the later box wins
    (0.7, 0.3, 0.2, True): [1, 5, 0, 0, 3, 3, 0, 0, 0, 0],
}


def _as_mmdet(result: AssignResult) -> list[int]:
    index = result.gt_index
    return torch.where(index >= 0, index + 1, torch.where(index == BACKGROUND, 0, -1)).tolist()


@pytest.mark.parametrize("config", sorted(MMDET_GT_INDS))
def test_assignment_equals_mmdet(config):
    pos, neg, min_pos, low_quality = config
    result = assign_max_iou(PRIORS, GT_BOXES, GT_LABELS, pos, neg, min_pos, low_quality)
    assert _as_mmdet(result) == MMDET_GT_INDS[config]
    positive = result.gt_index >= 0
    assert torch.equal(result.labels[positive], GT_LABELS[result.gt_index[positive]])
    assert (result.labels[~positive] == result.gt_index[~positive]).all()
    # the IoU of each positive with the box it learns; 0 elsewhere
    expected = torch.tensor([0.9, 1.0, 0, 0, 0.9070294, 0.7520834, 0, 0, 0, 0])
    if config[:3] == (0.5, 0.4, 0.0):
        expected[[4, 5, 7]] = torch.tensor([0.25, 0.25, 0.0004])
    if config[:3] == (0.7, 0.3, 0.2):
        expected[[4, 5]] = 0.25
    torch.testing.assert_close(result.iou, expected)


def test_priors_between_the_thresholds_are_ignored():
    result = assign_max_iou(PRIORS, GT_BOXES[:1], GT_LABELS[:1], 0.95, 0.1, 0.3, False)
    # prior 0 overlaps box 0 by 0.9: neither positive (< 0.95) nor negative (>= 0.1)
    assert result.gt_index[0] == IGNORE and result.labels[0] == IGNORE
    assert result.gt_index[3] == IGNORE  # IoU 0.118
    # a (low, high) pair: background only for a best IoU in [low, high)
    result = assign_max_iou(PRIORS, GT_BOXES, GT_LABELS, 0.7, (0.1, 0.3), 0.3, False)
    assert result.gt_index[2] == IGNORE  # IoU 0 is below low
    assert result.gt_index[3] == BACKGROUND  # IoU 0.143


def test_an_image_without_boxes_is_all_background():
    result = assign_max_iou(
        PRIORS, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 0.7, 0.3, 0.3
    )
    assert (result.gt_index == BACKGROUND).all() and (result.labels == BACKGROUND).all()
    assert (result.iou == 0).all()
    empty = assign_max_iou(torch.zeros(0, 4), GT_BOXES, GT_LABELS, 0.7, 0.3, 0.3)
    assert empty.gt_index.shape == (0,)


def test_batched_equals_per_image():
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=generator) * 100
    priors = torch.cat([xy, xy + torch.rand(300, 2, generator=generator) * 40 + 1], dim=1)
    targets = []
    for count in (4, 0, 7, 1):
        xy = torch.rand(count, 2, generator=generator) * 100
        boxes = torch.cat([xy, xy + torch.rand(count, 2, generator=generator) * 50 + 0.5], 1)
        targets.append(
            {"boxes": boxes, "labels": torch.randint(0, 5, (count,), generator=generator)}
        )
    gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets)
    for config in MMDET_GT_INDS:
        batched = assign_max_iou_batched(priors, gt_boxes, gt_labels, gt_mask, *config)
        for image, target in enumerate(targets):
            single = assign_max_iou(priors, target["boxes"], target["labels"], *config)
            for got, want in zip(batched, single, strict=True):
                assert torch.equal(got[image], want), (config, image)


def test_bad_arguments_name_the_culprit():
    with pytest.raises(ValueError, match="neg_iou_thr <= pos_iou_thr"):
        assign_max_iou(PRIORS, GT_BOXES, GT_LABELS, 0.3, 0.7, 0.3)
    with pytest.raises(ValueError, match="min_pos_iou"):
        assign_max_iou(PRIORS, GT_BOXES, GT_LABELS, 0.7, 0.3, 1.5)
    with pytest.raises(ValueError, match="priors must be a"):
        assign_max_iou(PRIORS[:, :3], GT_BOXES, GT_LABELS, 0.7, 0.3, 0.3)
    bad = GT_BOXES.clone()
    bad[2] = torch.tensor([30.0, 30.0, 20.0, 40.0])
    with pytest.raises(ValueError, match=r"gt_boxes\[0, 2\]"):
        assign_max_iou(PRIORS, bad, GT_LABELS, 0.7, 0.3, 0.3)


def _result(gt_index: list[int]) -> AssignResult:
    index = torch.tensor(gt_index)
    return AssignResult(index, index.clone(), torch.zeros(len(index)))


def test_sampler_caps_the_positives_and_fills_with_negatives():
    # 30 positives, 100 negatives, 20 ignored
    result = _result([0] * 30 + [BACKGROUND] * 100 + [IGNORE] * 20)
    pos, neg = sample_random(result, 64, 0.25, torch.Generator().manual_seed(0))
    assert len(pos) == 16 and len(neg) == 48
    assert (result.gt_index[pos] >= 0).all() and (result.gt_index[neg] == BACKGROUND).all()
    assert torch.equal(pos, pos.sort().values) and len(pos.unique()) == len(pos)
    # few positives: every one of them, negatives fill up to num
    few = _result([0] * 3 + [BACKGROUND] * 100)
    pos, neg = sample_random(few, 64, 0.5, torch.Generator().manual_seed(0))
    assert pos.tolist() == [0, 1, 2] and len(neg) == 61
    # num above the candidates: everything but the ignored, whatever the stream
    pos, neg = sample_random(result, 10**6, 0.25)
    assert pos.tolist() == list(range(30)) and neg.tolist() == list(range(30, 130))


def test_sampler_draws_like_mmdet_from_the_same_stream():
    # mmdet's random_choice: torch.randperm(len(gallery))[:num] on the global CPU stream
    result = _result([0] * 30 + [BACKGROUND] * 100)
    torch.manual_seed(5)
    pos, neg = sample_random(result, 40, 0.25)
    torch.manual_seed(5)
    expected_pos = torch.randperm(30)[:10].unique()
    expected_neg = (torch.randperm(100)[:30] + 30).unique()
    assert torch.equal(pos, expected_pos) and torch.equal(neg, expected_neg)


def test_sampler_is_reproducible_and_checks_its_arguments():
    result = _result([0] * 30 + [BACKGROUND] * 100)
    first = sample_random(result, 40, 0.25, torch.Generator().manual_seed(1))
    again = sample_random(result, 40, 0.25, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    with pytest.raises(ValueError, match="one image"):
        sample_random(AssignResult(*(f[None] for f in result)), 40, 0.25)
    with pytest.raises(ValueError, match="pos_fraction"):
        sample_random(result, 40, 1.5)
