"""`mobilenets export --checkpoint`: a task run's whole model to ONNX, fp32 or static int8.

int8 is `backbone.export.quantize_int8` (ONNX Runtime, `quant_pre_process`, QDQ, per-channel S8
weights, 7-bit on an x86 CPU without VNNI, U8 activations) calibrated on images drawn the task's own
way (each task's `TaskDeployment.exportable`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from backbone.export import (
    DEFAULT_OPSET,
    add_int8_arguments,
    check_int8_arguments,
    export_onnx,
    folder_images,
    quantize_int8,
    read_metadata,
)
from tasks.common.deploy.deployment import (
    DeployError,
    TaskDeployment,
    load_task_module,
    read_checkpoint,
    recognise_task,
)


def export_task(
    checkpoint_path: str | os.PathLike,
    out: str | os.PathLike,
    deployments: Sequence[TaskDeployment],
    *,
    int8: bool = False,
    calibration: str | os.PathLike | None = None,
    calibration_synthetic: int | None = None,
    calibration_count: int = 256,
    per_channel: bool = True,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export the task model in `checkpoint_path` (of one of `deployments`) to ONNX at `out` (int8 with
    calibration images)."""
    checkpoint = read_checkpoint(checkpoint_path)
    deployment = recognise_task(checkpoint, deployments, checkpoint_path)
    module = load_task_module(checkpoint, deployment, checkpoint_path)
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    exportable = deployment.exportable(module, data, checkpoint_path)
    metadata = {
        "task": deployment.task, "image_size": exportable.image_size, **exportable.metadata,
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


def main_export(argv: Sequence[str] | None, deployments: Sequence[TaskDeployment]) -> int:
    """`mobilenets export`: a checkpoint of one of `deployments` with `--checkpoint`, else the backbone."""
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
            args.checkpoint, args.out, deployments, int8=args.int8, calibration=args.calibration,
            calibration_synthetic=args.calibration_synthetic, calibration_count=args.calibration_count,
            per_channel=not args.per_tensor, opset=args.opset,
        )  # fmt: skip
    except (DeployError, ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    metadata = read_metadata(path)
    precision = ("int8 " + ("per-channel" if metadata["int8"]["per_channel"] else "per-tensor")
                 if "int8" in metadata else "fp32")  # fmt: skip
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB; {metadata['task']} model, {precision}; "
        f"inputs N x 3 x {metadata['image_size']} x {metadata['image_size']}; "
        f"outputs {', '.join(metadata['outputs'])})"
    )
    return 0
