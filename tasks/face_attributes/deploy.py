"""The attribute model as exported: the MobileNet with one logit per attribute -> `logits` (N, attributes).

The decision thresholds stay in the module, which re-chooses them on the validation split at test.
"""

from __future__ import annotations

import numpy as np

from tasks.common.deploy import (
    Exportable,
    OnnxClassifier,
    TaskDeployment,
    image_loader,
    stack_images,
    trained_on_real_data,
)
from tasks.face_attributes.data import face_eval_transform
from tasks.face_attributes.model import DEFAULT_IMAGE_SIZE


def exportable(module, data: dict, path) -> Exportable:
    from tasks.face_attributes.synthetic import SyntheticAttributeFaces

    size = int(data.get("image_size", DEFAULT_IMAGE_SIZE))

    def synthetic(count: int) -> np.ndarray:
        if data.get("dataset", "synthetic") != "synthetic" or data.get("unlabeled_root"):
            raise trained_on_real_data(path, repr(data.get("unlabeled_root") or data["dataset"]))
        seed = int((data.get("synthetic") or {}).get("seed", 0))
        split = "unlabeled" if data.get("train_on") == "unlabeled" else "train"  # what it trained on
        faces = SyntheticAttributeFaces(count, size=size, seed=seed, split=split)
        return stack_images(faces.image(i) for i in range(count))

    metadata = {"num_attributes": module.hparams.num_attributes, "attribute_names": module.attribute_names}
    return Exportable(module.backbone, ["logits"], size, metadata,
                      image_loader(face_eval_transform(size)), synthetic)  # fmt: skip


DEPLOYMENT = TaskDeployment(
    task="face-attributes", module="tasks.face_attributes.module:FaceAttributesModule", prefix="backbone.",
    hparams=("num_attributes", "threshold_criterion"), network="backbone",
    exportable=exportable, runner=OnnxClassifier,
)  # fmt: skip
