"""PlaNet as exported: the body and one classifier per partition -> `logits_0` ... `logits_{P-1}`
(N, cells of partition p), coarse to fine.

The cell tables, the hierarchical combination and the position read-out stay in the module (buffers and
a softmax product: no arithmetic worth a graph).
"""

from __future__ import annotations

import numpy as np
import torch

from tasks.common.deploy import (
    Exportable,
    OnnxModel,
    TaskDeployment,
    image_loader,
    stack_images,
    trained_on_real_data,
)
from tasks.common.transforms import classification_eval


class OnnxGeolocator(OnnxModel):
    """PlaNet's `network(images)`: one logits tensor per partition, coarse to fine."""

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.run(images)


def exportable(module, data: dict, path) -> Exportable:
    from tasks.geolocation.synthetic import SyntheticGeo, make_world

    size = int(data.get("image_size", 224))

    def synthetic(count: int) -> np.ndarray:
        if data.get("dataset", "synthetic") != "synthetic":
            raise trained_on_real_data(path, f"{data['dataset']!r} photos")
        seed = int(data.get("seed", 0))  # the data module's world and training photos of that seed
        world = make_world(seed, cities=int(data.get("synthetic_cities", 120)),
                           regions=int(data.get("synthetic_regions", 30)))  # fmt: skip
        photos = SyntheticGeo(world, count, split="train", size=size, seed=seed)
        return stack_images(photos.image(i) for i in range(count))

    cells = list(module.num_cells)
    outputs = [f"logits_{i}" for i in range(len(cells))]
    return Exportable(module.network, outputs, size, {"num_cells": cells},
                      image_loader(classification_eval(size)), synthetic)  # fmt: skip


DEPLOYMENT = TaskDeployment(
    task="geolocation", module="tasks.geolocation.module:GeolocationModule", prefix="network.backbone.",
    hparams=("num_cells", "smoothing_km", "position"), network="network",
    exportable=exportable, runner=OnnxGeolocator,
)  # fmt: skip
