"""Running an exported task model: ONNX Runtime stand-ins for each task's network, and `--runtime`.

`OnnxClassifier`, `OnnxEmbedder`, `OnnxDetector`, `OnnxGeolocator` and `OnnxAttributes` return what
the PyTorch network returns, so `attach_runtime` can put one in place of the network inside a task's
LightningModule and the task's own `test` (metrics, data module, reports) scores the exported model.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from backbone.export import onnx_session, read_metadata
from tasks.deploy.export import export_task
from tasks.deploy.ssd import select_detections
from tasks.deploy.targets import DeployError, task_of_module

RUNTIMES = ("torch", "onnx", "onnx-int8")


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


class OnnxGeolocator(OnnxModel):
    """PlaNet's `network(images)`: one logits tensor per partition, coarse to fine."""

    task = "geolocation"

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.run(images)


class OnnxAttributes(OnnxClassifier):
    task = "face-attributes"


RUNNERS = {cls.task: cls for cls in (OnnxClassifier, OnnxEmbedder, OnnxDetector, OnnxGeolocator,
                                     OnnxAttributes)}  # fmt: skip


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
