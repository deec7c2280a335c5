"""What each task exports: the network the ONNX file holds, its outputs, and the task's own input pipeline.

* fine-grained: the MobileNet with its classifier -> `logits` (N, classes);
* face embedding: the embedder as evaluated (projection, BN, L2 norm, and the flip test when the
  model uses it) -> `embeddings` (N, D);
* SSD: the network, the box decoding against its fixed anchors and the clip to the image ->
  `boxes` (N, anchors, 4), xyxy in units of the input side (as TF's detectors output them; the
  runner scales them to pixels) and `scores` (N, anchors, classes + 1), softmaxed (`ssd.py`).
  Faster R-CNN is not exported (its RoI stage crops a data-dependent number of proposals);
* geolocation: PlaNet, the body and one classifier per partition -> `logits_0` ... `logits_{P-1}`
  (N, cells of partition p), coarse to fine. The cell tables, the hierarchical combination and the
  position read-out stay in the module (buffers and a softmax product: no arithmetic worth a graph);
* face attributes: the MobileNet with one logit per attribute -> `logits` (N, attributes); the
  decision thresholds stay in the module, which re-chooses them on the validation split at test.

Calibration images are drawn the task's own way: a folder is read with `tasks.common.io.read_image`
and preprocessed by the task's evaluation transform; the synthetic count renders images of the
training split of the recipe's own generator (refused for a model trained on real data).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from tasks.deploy.ssd import SSDNetwork
from tasks.deploy.targets import DeployError


@dataclass
class Exportable:
    """A task network ready for `export_onnx`, with the task's own input pipeline for calibration."""

    network: nn.Module
    output_names: list[str]
    image_size: int
    metadata: dict
    load_image: Callable[[Path], np.ndarray]  # file -> CHW float32, preprocessed as in evaluation
    synthetic: Callable[[int], np.ndarray]  # N -> (N, 3, H, W) from the recipe's generator


def _image_loader(transform) -> Callable[[Path], np.ndarray]:
    from tasks.common.io import read_image
    from tasks.common.transforms import to_model_input

    return lambda path: to_model_input(transform(image=read_image(path))["image"]).numpy()


def _stack(images) -> np.ndarray:
    from tasks.common.transforms import to_model_input

    return np.stack([to_model_input(np.asarray(image)).numpy() for image in images])


def _real_data(path, what: str) -> DeployError:
    return DeployError(f"{path}: trained on {what}, not the synthetic set; calibrate on its images with "
                       "--calibration DIR")  # fmt: skip


def _finegrained(module, data: dict, path) -> Exportable:
    from tasks.common.transforms import classification_eval
    from tasks.finegrained.synthetic import SyntheticFineGrained

    size = int(data.get("image_size", 224))

    def synthetic(count: int) -> np.ndarray:
        if data.get("dataset", "synthetic") != "synthetic":
            raise _real_data(path, repr(data["dataset"]))
        classes = int(data.get("synthetic_classes", module.hparams.num_classes))
        images = SyntheticFineGrained(classes, math.ceil(count / classes), size=size,
                                      seed=int(data.get("seed", 0)), split="train")  # fmt: skip
        return _stack(images.image(i)[0] for i in range(count))

    metadata = {"num_classes": module.hparams.num_classes, "class_names": module.class_names}
    return Exportable(module.backbone, ["logits"], size, metadata,
                      _image_loader(classification_eval(size)), synthetic)  # fmt: skip


def _face(module, data: dict, path) -> Exportable:
    from tasks.face_embedding.data import SyntheticFacesConfig, face_eval_transform
    from tasks.face_embedding.model import DEFAULT_IMAGE_SIZE
    from tasks.face_embedding.synthetic import SyntheticFaces

    size = int(data.get("image_size", DEFAULT_IMAGE_SIZE))

    def synthetic(count: int) -> np.ndarray:
        if data.get("train_root"):
            raise _real_data(path, f"the folders under {data['train_root']}")
        config = SyntheticFacesConfig(**(data.get("synthetic") or {}))
        per_identity = 4  # training people, 4 photos each: as many faces as photo conditions
        faces = SyntheticFaces(math.ceil(count / per_identity), per_identity, size=size, seed=config.seed)
        return _stack(faces.image(i) for i in range(count))

    metadata = {"embedding_dim": module.hparams.embedding_dim, "flip_test": module.embedder.flip_test}
    return Exportable(module.embedder, ["embeddings"], size, metadata,
                      _image_loader(face_eval_transform(size)), synthetic)  # fmt: skip


def _detection(module, data: dict, path) -> Exportable:
    import albumentations as A

    from tasks.detection.synthetic import render_image

    if module.architecture != "ssd":
        raise DeployError(f"{path}: a {module.architecture!r} detector; only SSD exports (Faster R-CNN's "
                          "second stage runs on a data-dependent number of proposals)")  # fmt: skip
    size = int(module.image_size)
    resize = A.Compose([A.Resize(height=size, width=size)])  # `detection_eval` without its box params

    def synthetic(count: int) -> np.ndarray:
        if not data.get("synthetic_images"):
            raise _real_data(path, "COCO-format data")
        side = int(data.get("synthetic_image_size", 320))
        seed = int(data.get("seed", 0))  # indices from 0 are synth-shapes' training images
        return _stack(resize(image=np.asarray(render_image(seed, i, (side, side))[0]))["image"]
                      for i in range(count))  # fmt: skip

    detector = module.detector
    metadata = {
        "num_classes": module.num_classes,
        "score_thresh": detector.score_thresh,
        "nms_thresh": detector.nms_thresh,
        "detections_per_img": detector.detections_per_img,
        "topk_candidates": detector.topk_candidates,
    }
    return Exportable(SSDNetwork(detector, size), ["boxes", "scores"], size, metadata,
                      _image_loader(resize), synthetic)  # fmt: skip


def _geolocation(module, data: dict, path) -> Exportable:
    from tasks.common.transforms import classification_eval
    from tasks.geolocation.synthetic import SyntheticGeo, make_world

    size = int(data.get("image_size", 224))

    def synthetic(count: int) -> np.ndarray:
        if data.get("dataset", "synthetic") != "synthetic":
            raise _real_data(path, f"{data['dataset']!r} photos")
        seed = int(data.get("seed", 0))  # the data module's world and training photos of that seed
        world = make_world(seed, cities=int(data.get("synthetic_cities", 120)),
                           regions=int(data.get("synthetic_regions", 30)))  # fmt: skip
        photos = SyntheticGeo(world, count, split="train", size=size, seed=seed)
        return _stack(photos.image(i) for i in range(count))

    cells = list(module.num_cells)
    outputs = [f"logits_{i}" for i in range(len(cells))]
    return Exportable(module.network, outputs, size, {"num_cells": cells},
                      _image_loader(classification_eval(size)), synthetic)  # fmt: skip


def _face_attributes(module, data: dict, path) -> Exportable:
    from tasks.face_attributes.data import face_eval_transform
    from tasks.face_attributes.model import DEFAULT_IMAGE_SIZE
    from tasks.face_attributes.synthetic import SyntheticAttributeFaces

    size = int(data.get("image_size", DEFAULT_IMAGE_SIZE))

    def synthetic(count: int) -> np.ndarray:
        if data.get("dataset", "synthetic") != "synthetic" or data.get("unlabeled_root"):
            raise _real_data(path, repr(data.get("unlabeled_root") or data["dataset"]))
        seed = int((data.get("synthetic") or {}).get("seed", 0))
        split = "unlabeled" if data.get("train_on") == "unlabeled" else "train"  # what it trained on
        faces = SyntheticAttributeFaces(count, size=size, seed=seed, split=split)
        return _stack(faces.image(i) for i in range(count))

    metadata = {"num_attributes": module.hparams.num_attributes, "attribute_names": module.attribute_names}
    return Exportable(module.backbone, ["logits"], size, metadata,
                      _image_loader(face_eval_transform(size)), synthetic)  # fmt: skip


EXPORTABLES: dict[str, Callable[..., Exportable]] = {
    "finegrained": _finegrained, "face-embedding": _face, "detection": _detection,
    "geolocation": _geolocation, "face-attributes": _face_attributes,
}  # fmt: skip
