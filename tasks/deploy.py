"""Deploying a trained task model: ONNX export (fp32 or static int8) and an ONNX Runtime stand-in.

    mobilenets export --checkpoint RUN/checkpoints/last.ckpt --format onnx --out model.onnx
    mobilenets export --checkpoint CKPT --int8 --calibration DIR --out model-int8.onnx
    mobilenets export --checkpoint CKPT --int8 --calibration-synthetic 256 --out model-int8.onnx
    mobilenets <task> test --config RUN/config.yaml --runtime onnx-int8 --model model-int8.onnx

Without `--checkpoint`, `mobilenets export` is the bare backbone's (`backbone.export`).

The task is recognised from the checkpoint: the backbone prefix `TaskModule.on_save_checkpoint`
records and the hyper-parameters only that task's module takes (`TARGETS`). What is exported:

* fine-grained: the MobileNet with its classifier -> `logits` (N, classes);
* face embedding: the embedder as evaluated (projection, BN, L2 norm, and the flip test when the
  model uses it) -> `embeddings` (N, D);
* SSD: the network, the box decoding against its fixed anchors and the clip to the image ->
  `boxes` (N, anchors, 4), xyxy in units of the input side (as TF's detectors output them; the
  runner scales them to pixels) and `scores` (N, anchors, classes + 1), softmaxed.
  The per-class score threshold, top-k and NMS stay in PyTorch (`select_detections`, a copy of
  torchvision's `SSD.postprocess_detections`): they are data-dependent and cost under 1 ms, ONNX's
  `NonMaxSuppression` has no per-class top-k before it and breaks ties in its own order, and
  keeping torchvision's code keeps the exported detector's detections those of the PyTorch one.
  Faster R-CNN is not exported (its RoI stage crops a data-dependent number of proposals).

Calibration images are drawn the task's own way: a folder is read with `tasks.common.io.read_image`
and preprocessed by the task's evaluation transform; `--calibration-synthetic N` renders N images
of the training split of the recipe's own generator (refused for a model trained on real data).

`OnnxClassifier`, `OnnxEmbedder` and `OnnxDetector` return what the PyTorch model returns, so
`attach_runtime` can put one in place of the network inside a task's LightningModule and the task's
own `test` (metrics, data module, reports) scores the exported model.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backbone.export import (
    DEFAULT_OPSET,
    add_int8_arguments,
    check_int8_arguments,
    export_onnx,
    folder_images,
    onnx_session,
    quantize_int8,
    read_metadata,
)
from tasks.common.io import read_checkpoint as read_checkpoint_file
from tasks.common.lightning_cli import load_object

RUNTIMES = ("torch", "onnx", "onnx-int8")


class DeployError(ValueError):
    """A checkpoint, calibration source or model file that cannot be deployed; the message says why."""


@dataclass(frozen=True)
class TaskTarget:
    """How to recognise a task's checkpoint, and which part of its module the exported model replaces."""

    task: str  # the CLI name
    module: str  # "package.module:Class"
    prefix: str  # the backbone prefix its checkpoints record
    hparams: tuple[str, ...]  # hyper-parameters only this task's module takes
    network: str  # the module attribute that `attach_runtime` runs on ONNX Runtime


TARGETS = (
    TaskTarget("finegrained", "tasks.finegrained.module:FineGrainedModule", "backbone.",
               ("num_classes", "class_names", "label_smoothing"), "backbone"),
    TaskTarget("detection", "tasks.detection.module:DetectionModule", "detector.backbone.body.",
               ("architecture", "num_classes", "image_size", "ssd"), "detector"),
    TaskTarget("face-embedding", "tasks.face_embedding.module:FaceEmbeddingModule", "embedder.backbone.",
               ("embedding_dim", "mode", "margin"), "embedder"),
)  # fmt: skip
TARGET_OF = {target.task: target for target in TARGETS}


# -- checkpoints --------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> dict:
    try:
        saved = read_checkpoint_file(path)
    except (FileNotFoundError, ValueError) as err:
        raise DeployError(str(err)) from err
    if "state_dict" not in saved:
        raise DeployError(f"{path}: not a Lightning checkpoint of a task run (no 'state_dict')")
    return saved


def recognise_task(checkpoint: dict, path: str | os.PathLike = "checkpoint") -> TaskTarget:
    """The task whose module wrote `checkpoint`: its recorded backbone prefix and hyper-parameters."""
    prefix = checkpoint.get("backbone_prefix")
    hparams = checkpoint.get("hyper_parameters") or {}
    matches = [t for t in TARGETS if t.prefix == prefix and all(k in hparams for k in t.hparams)]
    if len(matches) == 1:
        return matches[0]
    known = "; ".join(f"{t.task} (prefix {t.prefix!r}, hyper-parameters {', '.join(t.hparams)})"
                      for t in TARGETS)  # fmt: skip
    what = "matches several tasks" if matches else "matches no exportable task"
    raise DeployError(
        f"{path}: cannot recognise the task: backbone_prefix {prefix!r} and hyper-parameters "
        f"[{', '.join(sorted(hparams)) or 'none'}] {what}. Known: {known}"
    )


def load_task_module(checkpoint: dict, target: TaskTarget, path: str | os.PathLike = "checkpoint"):
    """The task's LightningModule rebuilt from the checkpoint's hyper-parameters and weights, in eval mode."""
    # LightningCLI adds `_instantiator` (and Lightning other `_` keys): not constructor arguments
    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    backbone = dict(hparams.get("backbone") or {})
    backbone["weights"] = None  # the state dict holds every weight; the original file may be gone
    hparams["backbone"] = backbone
    try:
        module = load_object(target.module)(**hparams)
        module.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise DeployError(f"{path}: does not rebuild as a {target.task} model: {err}") from err
    return module.eval()


# -- what each task exports ---------------------------------------------------------------------
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


def _finegrained(module, data: dict, path) -> Exportable:
    from tasks.common.transforms import classification_eval
    from tasks.finegrained.synthetic import SyntheticFineGrained

    size = int(data.get("image_size", 224))

    def synthetic(count: int) -> np.ndarray:
        if data.get("dataset", "synthetic") != "synthetic":
            raise DeployError(f"{path}: trained on {data['dataset']!r}, not the synthetic set; "
                              "calibrate on its images with --calibration DIR")  # fmt: skip
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
            raise DeployError(f"{path}: trained on the folders under {data['train_root']}, not synthetic "
                              "faces; calibrate on its images with --calibration DIR")  # fmt: skip
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
            raise DeployError(f"{path}: trained on COCO-format data, not synth-shapes; calibrate on its "
                              "images with --calibration DIR")  # fmt: skip
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


EXPORTABLES: dict[str, Callable] = {"finegrained": _finegrained, "face-embedding": _face,
                                    "detection": _detection}  # fmt: skip


class SSDNetwork(nn.Module):
    """torchvision SSD's eval path up to (not including) the per-class selection, batched for ONNX.

    Anchors depend only on the (fixed) input size and are a constant here; decoding is
    `BoxCoder.decode_single` and clipping `clip_boxes_to_image`, written over a batch axis.
    """

    def __init__(self, detector: nn.Module, image_size: int) -> None:
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.features = detector.backbone
        self.head = detector.head
        self.weights = tuple(float(w) for w in detector.box_coder.weights)
        self.xform_clip = float(detector.box_coder.bbox_xform_clip)
        self.image_size = image_size
        with torch.no_grad():
            example = torch.zeros(1, 3, image_size, image_size)
            was_training = detector.training
            detector.eval()
            features = list(self.features(example).values())
            anchors = detector.anchor_generator(ImageList(example, [(image_size, image_size)]), features)[0]
            detector.train(was_training)
        self.register_buffer("anchors", anchors.clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head = self.head(list(self.features(images).values()))
        return self.decode(head["bbox_regression"]), F.softmax(head["cls_logits"], dim=-1)

    def decode(self, rel_codes: torch.Tensor) -> torch.Tensor:
        anchors = self.anchors
        widths = anchors[:, 2] - anchors[:, 0]
        heights = anchors[:, 3] - anchors[:, 1]
        ctr_x = anchors[:, 0] + 0.5 * widths
        ctr_y = anchors[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = rel_codes[..., 0::4] / wx
        dy = rel_codes[..., 1::4] / wy
        dw = torch.clamp(rel_codes[..., 2::4] / ww, max=self.xform_clip)
        dh = torch.clamp(rel_codes[..., 3::4] / wh, max=self.xform_clip)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        half_w, half_h = 0.5 * pred_w, 0.5 * pred_h
        boxes = torch.stack(
            (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=-1
        ).flatten(-2)
        size = float(self.image_size)
        clipped = torch.stack((boxes[..., 0::2].clamp(0, size), boxes[..., 1::2].clamp(0, size)), dim=-1)
        return clipped.reshape(boxes.shape) / size  # normalised, as TF's detectors output them


def select_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    *,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    topk_candidates: int,
) -> dict[str, torch.Tensor]:
    """One image's decoded boxes (A, 4) and softmax scores (A, C+1) -> detections: torchvision's loop."""
    from torchvision.ops import boxes as box_ops

    image_boxes, image_scores, image_labels = [], [], []
    for label in range(1, scores.shape[-1]):
        score = scores[:, label]
        keep = score > score_thresh
        score, box = score[keep], boxes[keep]
        score, idxs = score.topk(min(topk_candidates, score.numel()))
        image_boxes.append(box[idxs])
        image_scores.append(score)
        image_labels.append(torch.full_like(score, fill_value=label, dtype=torch.int64))
    image_boxes = torch.cat(image_boxes, dim=0)
    image_scores = torch.cat(image_scores, dim=0)
    image_labels = torch.cat(image_labels, dim=0)
    keep = box_ops.batched_nms(image_boxes, image_scores, image_labels, nms_thresh)[:detections_per_img]
    return {"boxes": image_boxes[keep], "scores": image_scores[keep], "labels": image_labels[keep]}


# -- export -------------------------------------------------------------------------------------
def export_task(
    checkpoint_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    int8: bool = False,
    calibration: str | os.PathLike | None = None,
    calibration_synthetic: int | None = None,
    calibration_count: int = 256,
    per_channel: bool = True,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export the task model in `checkpoint_path` to ONNX at `out` (int8 with calibration images)."""
    checkpoint = read_checkpoint(checkpoint_path)
    target = recognise_task(checkpoint, checkpoint_path)
    module = load_task_module(checkpoint, target, checkpoint_path)
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    exportable = EXPORTABLES[target.task](module, data, checkpoint_path)
    metadata = {
        "task": target.task, "image_size": exportable.image_size, **exportable.metadata,
        "outputs": exportable.output_names, "checkpoint": str(Path(checkpoint_path).resolve()),
    }  # fmt: skip
    if int8:  # read the calibration images first: a bad folder fails before any work
        if calibration is not None:
            images = folder_images(calibration, exportable.load_image, limit=calibration_count)
        elif calibration_synthetic:
            images = exportable.synthetic(calibration_synthetic)
        else:
            raise DeployError("int8 export needs calibration images: a folder or a synthetic count")
    network = exportable.network.float().to(memory_format=torch.contiguous_format).eval()
    size = exportable.image_size
    if not int8:
        return export_onnx(network, out, resolution=size, opset=opset,
                           output_names=exportable.output_names, metadata=metadata)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mobilenets-export-") as folder:
        fp32 = export_onnx(network, Path(folder) / "fp32.onnx", resolution=size, opset=opset,
                           output_names=exportable.output_names, metadata=metadata)  # fmt: skip
        return quantize_int8(fp32, out, images, per_channel=per_channel)


def main_export(argv: Sequence[str] | None = None) -> int:
    """`mobilenets export`: a task checkpoint with `--checkpoint`, else the bare backbone."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(arg == "--checkpoint" or arg.startswith("--checkpoint=") for arg in argv):
        from backbone.export import main_export as export_backbone

        if any(arg in ("-h", "--help") for arg in argv):
            print("With --checkpoint RUN/checkpoints/last.ckpt: export that task's whole model (see "
                  "`mobilenets export --checkpoint X --help`). Without: the bare backbone.\n")  # fmt: skip
        return export_backbone(argv)
    parser = argparse.ArgumentParser(
        prog="mobilenets export --checkpoint", description="Export a trained task model to ONNX (fp32/int8)."
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="a task run's .ckpt")
    parser.add_argument("--format", choices=("onnx",), default="onnx")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    add_int8_arguments(parser)
    args = parser.parse_args(argv)
    check_int8_arguments(parser, args)
    try:
        path = export_task(
            args.checkpoint, args.out, int8=args.int8, calibration=args.calibration,
            calibration_synthetic=args.calibration_synthetic, calibration_count=args.calibration_count,
            per_channel=not args.per_tensor, opset=args.opset,
        )  # fmt: skip
    except (DeployError, ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    metadata = read_metadata(path)
    precision = ("int8 " + ("per-channel" if metadata["int8"]["per_channel"] else "per-tensor")
                 if "int8" in metadata else "fp32")  # fmt: skip
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB; {metadata['task']} model, {precision}; "
          f"inputs N x 3 x {metadata['image_size']} x {metadata['image_size']}; "
          f"outputs {', '.join(metadata['outputs'])})")
    return 0


# -- running an exported model ------------------------------------------------------------------
class OnnxModel:
    """An exported task model on ONNX Runtime; subclasses return what the PyTorch model returns."""

    task: str = ""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DeployError(f"{self.path}: exported model not found")
        try:
            self.session = onnx_session(self.path, threads=threads)
        except Exception as err:  # onnxruntime raises its own types for a bad file
            raise DeployError(f"{self.path}: not a loadable ONNX model ({err})") from err
        self.metadata = read_metadata(self.session)
        if self.metadata.get("task") != self.task:
            raise DeployError(f"{self.path}: holds a {self.metadata.get('task') or 'non-suite'} model, "
                              f"not a {self.task} one")  # fmt: skip
        self.image_size = int(self.metadata["image_size"])
        self.int8 = "int8" in self.metadata

    def run(self, images: torch.Tensor) -> list[torch.Tensor]:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs = self.session.run(None, {"images": array})
        return [torch.from_numpy(output).to(images.device) for output in outputs]

    def eval(self) -> OnnxModel:  # lets code that calls model.eval() keep working
        return self


class OnnxClassifier(OnnxModel):
    task = "finegrained"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)[0]


class OnnxEmbedder(OnnxModel):
    task = "face-embedding"

    @property
    def embedding_dim(self) -> int:
        return int(self.metadata["embedding_dim"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)[0]


class OnnxDetector(OnnxModel):
    """`detector(images)` of torchvision's SSD in eval mode: a list of {boxes, scores, labels} per image.

    Images of another size are resized to the exported one as torchvision's transform does
    (bilinear), and boxes scaled back to each image's own size.
    """

    task = "detection"

    def __call__(self, images, targets=None) -> list[dict[str, torch.Tensor]]:
        size = self.image_size
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            images = list(images)
        original = [tuple(image.shape[-2:]) for image in images]
        batch = torch.stack([
            image if image.shape[-2:] == (size, size)
            else F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            for image in images
        ])  # fmt: skip
        boxes, scores = self.run(batch)
        boxes = boxes * float(size)
        options = {key: self.metadata[key] for key in
                   ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates")}  # fmt: skip
        detections = []
        for image_boxes, image_scores, (height, width) in zip(boxes, scores, original, strict=True):
            found = select_detections(image_boxes, image_scores, **options)
            if (height, width) != (size, size):
                scale = torch.tensor([width / size, height / size] * 2, device=found["boxes"].device)
                found["boxes"] = found["boxes"] * scale
            detections.append(found)
        return detections


RUNNERS = {cls.task: cls for cls in (OnnxClassifier, OnnxEmbedder, OnnxDetector)}


def load_deployed(path: str | os.PathLike, *, threads: int | None = None) -> OnnxModel:
    """The right `OnnxModel` for an exported file, from the task its metadata names."""
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"{path}: exported model not found")
    task = read_metadata(path).get("task")
    if task not in RUNNERS:
        raise DeployError(f"{path}: not a task model exported by `mobilenets export --checkpoint` "
                          f"(metadata task {task!r})")  # fmt: skip
    return RUNNERS[task](path, threads=threads)


def task_of_module(module: nn.Module) -> TaskTarget:
    cls = type(module)
    for target in TARGETS:
        module_name, _, class_name = target.module.partition(":")
        if cls.__module__ == module_name and cls.__name__ == class_name:
            return target
    raise DeployError(f"{cls.__name__}: no ONNX runtime for this task yet (exportable: "
                      f"{', '.join(t.task for t in TARGETS)})")  # fmt: skip


def attach_runtime(
    module: nn.Module,
    runtime: str,
    *,
    model: str | os.PathLike | None = None,
    ckpt_path: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> OnnxModel | None:
    """Run `module`'s network on ONNX Runtime: its `forward` then feeds the exported model.

    `model` is an exported file; without it, `ckpt_path` is exported into `out_dir` first (fp32, or
    int8 calibrated on 256 images of the recipe's synthetic generator). The exported model must be
    of the module's task and, when given as a file, of the requested precision.
    """
    target = task_of_module(module) if runtime != "torch" else None
    deployed = load_runtime(runtime, target.task if target else "", model=model, ckpt_path=ckpt_path,
                            out_dir=out_dir, threads=threads)
    if deployed is None:
        return None
    network = getattr(module, target.network)
    network.forward = deployed  # nn.Module.__call__ dispatches to the instance attribute
    module.deployed_model = deployed
    return deployed


def load_runtime(
    runtime: str,
    task: str,
    *,
    model: str | os.PathLike | None = None,
    ckpt_path: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> OnnxModel | None:
    """The exported `task` model `--runtime` asks for (None for "torch"): `model`, or `ckpt_path`
    exported into `out_dir` first; checked to be of that task and precision."""
    if runtime not in RUNTIMES:
        raise DeployError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "torch":
        return None
    int8 = runtime == "onnx-int8"
    if model is None:
        if ckpt_path is None:
            raise DeployError(f"--runtime {runtime} needs --model FILE.onnx (an exported model) or "
                              "--ckpt_path (a checkpoint to export)")  # fmt: skip
        out_dir = Path(out_dir or tempfile.mkdtemp(prefix="mobilenets-runtime-"))
        model = export_task(ckpt_path, out_dir / ("model-int8.onnx" if int8 else "model.onnx"),
                            int8=int8, calibration_synthetic=256 if int8 else None)  # fmt: skip
        print(f"exported {ckpt_path} to {model}")
    deployed = load_deployed(model, threads=threads)
    if deployed.task != task:
        raise DeployError(f"{model}: a {deployed.task} model, but this is `mobilenets {task}`")
    if deployed.int8 != int8:
        raise DeployError(f"{model}: an {'int8' if deployed.int8 else 'fp32'} model, but --runtime is "
                          f"{runtime}")  # fmt: skip
    return deployed


def split_runtime_args(args: Sequence[str]) -> tuple[list[str], tuple[str, str | None]]:
    """Take `--runtime onnx|onnx-int8` and `--model FILE.onnx` out of a task command's argv.

    `--model` with any other value (a YAML, `--model.x ...`) is left for LightningCLI.
    """
    rest, runtime, model = [], "torch", None
    args, i = list(args), 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        step = 1
        if name in ("--runtime", "--model") and not eq and i + 1 < len(args):
            value, step = args[i + 1], 2
        if name == "--runtime" and (eq or step == 2):
            runtime = value
        elif name == "--model" and (eq or step == 2) and value.endswith(".onnx"):
            model = value
        else:
            rest.append(args[i])
            step = 1
        i += step
    if runtime not in RUNTIMES:
        raise SystemExit(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if model is not None and runtime == "torch":
        raise SystemExit(f"--model {model}: an exported model runs with --runtime onnx or onnx-int8")
    return rest, (runtime, model)


def attach_cli_runtime(cli) -> None:
    """`SuiteCLI.before_{validate,test,predict}`: put the exported model in place of the network."""
    runtime, model = cli.runtime
    if runtime == "torch":
        return
    from tasks.common.lightning_cli import RUNS_ROOT

    config = cli.config[cli.subcommand]
    try:
        attach_runtime(
            cli.model, runtime, model=model, ckpt_path=config.get("ckpt_path"),
            out_dir=RUNS_ROOT / cli.spec.name / cli.version, threads=getattr(cli.model, "cpu_threads", None),
        )  # fmt: skip
    except DeployError as err:
        raise SystemExit(f"mobilenets {cli.spec.name} {cli.subcommand}: {err}") from None


__all__ = [
    "DeployError", "Exportable", "OnnxClassifier", "OnnxDetector", "OnnxEmbedder", "OnnxModel",
    "SSDNetwork", "TARGETS", "attach_cli_runtime", "attach_runtime", "export_task", "load_deployed",
    "main_export", "read_checkpoint", "recognise_task", "select_detections", "split_runtime_args",
]  # fmt: skip
