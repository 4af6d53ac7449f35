"""Multi-scale deformable attention in pure PyTorch (Zhu et al., 2021), on a CPU or CUDA.

Dense attention lets every query read every key: with S flattened locations over all
levels that is S x S weights per head. Deformable attention lets each query read only
``num_points`` locations per level and head, at offsets it predicts around its
reference point, and weights them with a softmax over those ``num_levels x num_points``
samples: S x (levels x points) work per head, whatever the image size.

::

    attention = MultiScaleDeformableAttention(256, num_heads=8, num_levels=4, num_points=4)
    out = attention(query, value, reference_points, spatial_shapes, query_pos=pos)
    # query (B, Q, D), value (B, S, D), reference_points (B, Q, L, 2) in [0, 1] (x, y)
    # or (B, Q, L, 4) boxes (cx, cy, w, h); spatial_shapes (L, 2) long (H_l, W_l)

The sampling itself, :func:`multi_scale_deformable_attention`, reads each level with
``torch.nn.functional.grid_sample`` (bilinear, zeros outside, ``align_corners=False``): a
location ``(x, y)`` in [0, 1] is the point ``(x W_l - 0.5, y H_l - 0.5)`` in the level's
pixel indices, so (0.5 / W_l, 0.5 / H_l) is the centre of its first pixel.

Reference: mmcv ``ops/multi_scale_deform_attn.py`` (``multi_scale_deformable_attn_pytorch``,
``MultiScaleDeformableAttention``), fundamentalvision/Deformable-DETR
``models/ops/functions/ms_deform_attn_func.py`` (``ms_deform_attn_core_pytorch``), whose
CUDA kernel computes the same; tests compare with values recorded from mmcv 2.1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiScaleDeformableAttention", "multi_scale_deformable_attention"]


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Weighted sum of bilinear samples of every level, per head.

    Args:
        value: (B, S, heads, D), the flattened levels (level by level, each row-major),
            S = sum of H_l W_l, already split into heads.
        spatial_shapes: (L, 2) long, (H_l, W_l) of each level.
        sampling_locations: (B, Q, heads, L, P, 2), (x, y) in [0, 1] of the level (outside
            [0, 1] reads zeros).
        attention_weights: (B, Q, heads, L, P), the weight of each sample (a softmax over
            L x P in the module; any weights here).

    Returns:
        (B, Q, heads * D): for each query, the heads' outputs side by side.

    Raises:
        ValueError: shapes that do not agree.
    """
    batch, num_keys, num_heads, head_dims = value.shape
    if sampling_locations.ndim != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "sampling_locations must be (B, Q, heads, L, P, 2), got "
            f"{tuple(sampling_locations.shape)}"
        )
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    if spatial_shapes.shape != (num_levels, 2):
        raise ValueError(
            f"spatial_shapes must be ({num_levels}, 2) for {num_levels} levels, "
            f"got {tuple(spatial_shapes.shape)}"
        )
    sizes = [int(height) * int(width) for height, width in spatial_shapes.tolist()]
    if sum(sizes) != num_keys:
        raise ValueError(f"value has {num_keys} locations, spatial_shapes give {sum(sizes)}")
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights must be {tuple(sampling_locations.shape[:-1])}, "
            f"got {tuple(attention_weights.shape)}"
        )
    grids = 2 * sampling_locations - 1  # grid_sample reads [-1, 1]
    # (B, Q, heads, L, P) -> (B heads, 1, Q, L, P)
    weights = attention_weights.transpose(1, 2).reshape(
        batch * num_heads, 1, num_queries, num_levels, num_points
    )
    output = None
    for level, (value_level, (height, width)) in enumerate(
        zip(value.split(sizes, dim=1), spatial_shapes.tolist(), strict=True)
    ):
        # (B, H W, heads, D) -> (B heads, D, H, W): one "image" per (image, head)
        value_level = value_level.permute(0, 2, 3, 1).reshape(
            batch * num_heads, head_dims, height, width
        )
        # (B, Q, heads, P, 2) -> (B heads, Q, P, 2)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples = F.grid_sample(
            value_level, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )  # [B heads, D, Q, P]
        # weighted sum over the level's points, accumulated level by level (no L x P
        # stack of samples in memory)
        level_output = (samples * weights[:, :, :, level]).sum(-1)  # [B heads, D, Q]
        output = level_output if output is None else output + level_output
    return output.view(batch, num_heads * head_dims, num_queries).transpose(1, 2).contiguous()


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over L levels: value projection, offsets and weights from the
    query, sampling, output projection, dropout and the residual (mmcv's module).

    Args:
        embed_dims: D, the width of queries and values.
        num_heads: heads; D must divide by it.
        num_levels: L, the levels of the value.
        num_points: P, samples per head and level.
        dropout: on the output, before the residual.

    The initialisation is the reference's: offsets' weights 0 and biases pointing head h
    in direction 2 pi h / heads (scaled so the larger coordinate is 1), point p at p + 1
    times that, so the heads start looking around in a star; attention weights 0 (equal
    weights); Xavier-uniform value and output projections with zero bias.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims {embed_dims} must divide by num_heads {num_heads}")
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's initialisation (see the class docstring)."""
        nn.init.zeros_(self.sampling_offsets.weight)
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        thetas = torch.arange(heads, dtype=torch.float32) * (2.0 * math.pi / heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        grid = directions.view(heads, 1, 1, 2).repeat(1, levels, points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def sampling(
        self, query: Tensor, reference_points: Tensor, spatial_shapes: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Where each query samples, and with which weights.

        Args:
            query: (B, Q, D), positional embedding already added.
            reference_points: (B, Q, L, 2) points (x, y) or (B, Q, L, 4) boxes (cx, cy, w,
                h), in [0, 1] of each level.
            spatial_shapes: (L, 2) long.

        Returns:
            sampling_locations (B, Q, heads, L, P, 2) and attention_weights
            (B, Q, heads, L, P) (a softmax over L x P). With points, an offset is in
            pixels of its level; with boxes, in eighths of the box (offset / P x size / 2),
            so the samples scale with the box.
        """
        batch, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        reference = reference_points[:, :, None, :, None]  # (B, Q, 1, L, 1, 2 or 4)
        if reference_points.shape[-1] == 2:
            normaliser = spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2): (W_l, H_l)
            locations = reference + offsets / normaliser[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = reference[..., :2] + offsets / points * reference[..., 2:] * 0.5
        else:
            raise ValueError(
                f"reference_points must end in 2 (points) or 4 (boxes), got "
                f"{tuple(reference_points.shape)}"
            )
        return locations, weights

    def forward(
        self,
        query: Tensor,
        value: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        query_pos: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``query`` to ``value``; returns the query updated (residual added).

        Args:
            query: (B, Q, D).
            value: (B, S, D), the flattened levels (the encoder's input, or its memory).
            reference_points: (B, Q, L, 2) or (B, Q, L, 4), see :meth:`sampling`.
            spatial_shapes: (L, 2) long, (H_l, W_l).
            query_pos: (B, Q, D) positional embedding, added to the query for the offsets
                and weights (not to the residual).
            key_padding_mask: (B, S) bool, True where the value is padding (read as 0).

        Returns:
            (B, Q, D): ``query + dropout(output_proj(sampled))``.
        """
        identity = query
        if query_pos is not None:
            query = query + query_pos
        batch, num_keys, _ = value.shape
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(batch, num_keys, self.num_heads, -1)
        locations, weights = self.sampling(query, reference_points, spatial_shapes)
        output = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return identity + self.dropout(self.output_proj(output))
