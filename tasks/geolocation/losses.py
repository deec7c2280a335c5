"""Cross-entropy over cells, plain or with PIGEON's haversine label smoothing.

Haversine smoothing (Haas et al., PIGEON, CVPR 2024): the target of a photo at x for cell n is
proportional to exp(-(d_n - d_min) / tau), d_n the great-circle distance from x to cell n's centroid
and d_min the smallest of them, so near cells share the credit and a near miss costs less than a far
one. tau is in km (PIGEON: 65-75). Photos whose cell was dropped in a partition (label -1) are left
out of that partition's loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.geolocation.metrics import great_circle_km_torch


def haversine_targets(coords: torch.Tensor, cell_positions: torch.Tensor, tau_km: float) -> torch.Tensor:
    """(batch, cells) soft targets for photos at `coords` (batch, 2: lat, lon in degrees)."""
    coords, cells = coords.double(), cell_positions.double()
    d = great_circle_km_torch(coords[:, :1], coords[:, 1:], cells[None, :, 0], cells[None, :, 1])
    return torch.softmax(-(d - d.min(dim=1, keepdim=True).values) / tau_km, dim=1)


def cell_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    coords: torch.Tensor | None = None,
    cell_positions: torch.Tensor | None = None,
    tau_km: float = 0.0,
) -> torch.Tensor:
    """Mean loss over the photos with a cell (label >= 0); 0 (with a graph) when there are none."""
    valid = labels >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    if tau_km <= 0:
        return F.cross_entropy(logits[valid], labels[valid])
    if coords is None or cell_positions is None:
        raise ValueError("haversine smoothing needs the photos' coords and the cells' positions")
    targets = haversine_targets(coords[valid], cell_positions, tau_km).to(logits.dtype)
    return -(targets * F.log_softmax(logits[valid], dim=1)).sum(dim=1).mean()
