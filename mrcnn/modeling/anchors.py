"""Pyramid-ordered anchors.

One anchor size per FPN level (P2..P6, strides 4..64) and every aspect ratio at each cell, ordered
level -> cell (row-major) -> ratio. That is the order in which the RPN head's outputs are
flattened (`mrcnn.modeling.rpn.RPNHead.forward`), so anchor `a` and prediction `a` always belong
together. Matches torchvision's `AnchorGenerator`: base anchors rounded to whole pixels, centred
on `(col * stride, row * stride)`, stride = input size // grid size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

NUM_LEVELS = 5  # P2..P6


def feature_grid_sizes(image_size: int) -> list[tuple[int, int]]:
    """(h, w) of P2..P6 for a square input whose side is a multiple of 32."""
    sizes = [image_size // s for s in (4, 8, 16, 32)]
    sizes.append(math.ceil(sizes[-1] / 2))  # P6 = stride-2 subsample of P5
    return [(s, s) for s in sizes]


class AnchorGenerator(nn.Module):
    """Anchors for a square input of side S.

    forward(S, device, dtype) -> anchors float [A, 4] xyxy in the padded frame, ordered level ->
    cell (row-major) -> ratio, and the anchor count of each level P2..P6 (they sum to A).
    Results are cached per (S, device, dtype).

    Args:
        sizes: one anchor side (sqrt of area) per level P2..P6, e.g. (32, 64, 128, 256, 512).
        ratios: height / width, e.g. (0.5, 1, 2); a = len(ratios) anchors per cell.
        anchor_stride: place anchors on every n-th feature cell (the RPN head's outputs are
            subsampled the same way).
    """

    def __init__(
        self, sizes: tuple[float, ...], ratios: tuple[float, ...], anchor_stride: int = 1
    ) -> None:
        super().__init__()
        if len(sizes) != NUM_LEVELS:
            raise ValueError(f"need one anchor size per level P2..P6, got {len(sizes)}")
        self.sizes = tuple(float(s) for s in sizes)
        self.ratios = tuple(float(r) for r in ratios)
        self.anchor_stride = anchor_stride
        self._cache: dict[tuple, tuple[Tensor, list[int]]] = {}

    @property
    def num_anchors_per_cell(self) -> int:
        return len(self.ratios)

    def cell_anchors(self, size: float) -> Tensor:
        """[len(ratios), 4] anchors of one level centred on (0, 0), rounded like torchvision."""
        ratios = torch.tensor(self.ratios, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = w_ratios * size
        hs = h_ratios * size
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def grid_sizes(self, image_size: int) -> list[tuple[int, int]]:
        """Anchor grid per level: the feature grid, subsampled by `anchor_stride`."""
        s = self.anchor_stride
        return [(math.ceil(h / s), math.ceil(w / s)) for h, w in feature_grid_sizes(image_size)]

    def forward(
        self, image_size: int, device: torch.device | str = "cpu", dtype=torch.float32
    ) -> tuple[Tensor, list[int]]:
        """-> anchors [A, 4] and the number of anchors per level (they sum to A)."""
        key = (image_size, str(device), dtype)
        if key not in self._cache:
            self._cache[key] = self._build(image_size, torch.device(device), dtype)
        return self._cache[key]

    def _build(self, image_size: int, device: torch.device, dtype) -> tuple[Tensor, list[int]]:
        per_level = []
        for size, (gh, gw), (fh, fw) in zip(
            self.sizes, self.grid_sizes(image_size), feature_grid_sizes(image_size), strict=True
        ):
            stride_y = image_size // fh * self.anchor_stride
            stride_x = image_size // fw * self.anchor_stride
            ys = torch.arange(gh, dtype=torch.float32) * stride_y
            xs = torch.arange(gw, dtype=torch.float32) * stride_x
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)  # [cells, 1, 4]
            per_level.append((shifts + self.cell_anchors(size)[None]).reshape(-1, 4))
        counts = [a.shape[0] for a in per_level]
        return torch.cat(per_level).to(device=device, dtype=dtype), counts
