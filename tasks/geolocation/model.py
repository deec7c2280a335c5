"""PlaNet on MobileNet (paper §4.4, Table 11): the MobileNet body and one large classifier per partition.

Table 11's network is the body (3 M parameters) and one final layer over the cells (10 M: about 9,800
cells of 1024 inputs). Several partitions at once (ISNs, GeoEstimation) share the body and add one
linear head each; the pooled feature goes through the backbone's own dropout first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from backbone import MobileNetV1
from tasks.common.config import BackboneConfig, as_dataclass


class PlaNet(nn.Module):
    """`forward(images)` -> one logits tensor per partition, coarse to fine as the partitions are given."""

    def __init__(self, backbone: MobileNetV1, num_cells: Sequence[int]) -> None:
        super().__init__()
        if not num_cells or any(n < 1 for n in num_cells):
            raise ValueError(f"num_cells must list at least one positive cell count, got {list(num_cells)}")
        self.backbone = backbone
        self.heads = nn.ModuleList(nn.Linear(backbone.num_features, n) for n in num_cells)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        pooled = self.backbone(images)  # num_classes=0: pooled, dropped-out features
        return [head(pooled) for head in self.heads]


def planet(*, num_cells: Sequence[int], backbone: BackboneConfig | dict | None = None) -> PlaNet:
    """A PlaNet network: `backbone` is the MobileNet config (width, weights, ...)."""
    body = as_dataclass(BackboneConfig, backbone).build(num_classes=0)
    return PlaNet(body, num_cells)


def load_planet(checkpoint: str | os.PathLike) -> tuple[PlaNet, dict]:
    """The network of a `mobilenets geolocation fit` checkpoint (weights_only) and its hyper-parameters."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hparams = saved.get("hyper_parameters", {})
    if "num_cells" not in hparams:
        raise ValueError(f"{checkpoint}: not a geolocation checkpoint (no num_cells hyper-parameter)")
    network = planet(
        num_cells=hparams["num_cells"], backbone={**hparams.get("backbone", {}), "weights": None}
    )
    state = {
        k.removeprefix("network."): v for k, v in saved["state_dict"].items() if k.startswith("network.")
    }
    network.load_state_dict(state)
    return network, hparams
