"""The fine-grained classifier as exported: the MobileNet with its classifier -> `logits` (N, classes)."""

from __future__ import annotations

import math

import numpy as np

from tasks.common.deploy import (
    Exportable,
    OnnxClassifier,
    TaskDeployment,
    image_loader,
    stack_images,
    trained_on_real_data,
)
from tasks.common.transforms import classification_eval


def exportable(module, data: dict, path) -> Exportable:
    from tasks.finegrained.synthetic import SyntheticFineGrained

    size = int(data.get("image_size", 224))

    def synthetic(count: int) -> np.ndarray:
        if data.get("dataset", "synthetic") != "synthetic":
            raise trained_on_real_data(path, repr(data["dataset"]))
        classes = int(data.get("synthetic_classes", module.hparams.num_classes))
        images = SyntheticFineGrained(classes, math.ceil(count / classes), size=size,
                                      seed=int(data.get("seed", 0)), split="train")  # fmt: skip
        return stack_images(images.image(i)[0] for i in range(count))

    metadata = {"num_classes": module.hparams.num_classes, "class_names": module.class_names}
    return Exportable(module.backbone, ["logits"], size, metadata,
                      image_loader(classification_eval(size)), synthetic)  # fmt: skip


DEPLOYMENT = TaskDeployment(
    task="finegrained", module="tasks.finegrained.module:FineGrainedModule", prefix="backbone.",
    hparams=("num_classes", "class_names", "label_smoothing"), network="backbone",
    exportable=exportable, runner=OnnxClassifier,
)  # fmt: skip
