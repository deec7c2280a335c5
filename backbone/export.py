"""ONNX export of the backbone (`mobilenets export --format onnx`).

Uses the TorchScript-based exporter (`dynamo=False`): for this static, plain-conv network it
exports in about 3 s against about 20 s for the torch.export-based one, and it writes opset 17
directly (the dynamo path emits opset 18 and fails converting it down). Only the batch axis is
dynamic; the spatial size is fixed at export time, which also freezes the TF "SAME" pads of a
`tf_padding=True` model at the right values for that size.

int8 (`--int8`) is ONNX Runtime's static quantization as measured fastest on this kind of CPU
(REFERENCE §6): `quant_pre_process` first, then QDQ format, per-channel S8 weights, U8 activations,
MinMax ranges from calibration images. On an x86 CPU without VNNI the weights keep
to 7 bits (`needs_reduced_range`): its int8 kernels saturate 16-bit pair sums of full 8-bit ones.
Only the arithmetic ops (Conv, Gemm, MatMul and the ReLU6 clips folded into them) are quantized;
whatever a task model computes after its network (box decoding, L2 normalisation, the flip of a
flip test) stays in float. Per-tensor weights (`--per-tensor`) exist only to measure why they are
not the default: they wreck MobileNet accuracy.
This module knows nothing of tasks; `tasks.common.deploy` exports whole task models with these pieces.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from backbone.fileio import atomic_write
from backbone.mobilenet import MIN_INPUT_SIZE, ConvBNAct

DEFAULT_OPSET = 17
MAX_EXPORT_WIDTH_MULT = 4.0  # the paper's widths are 0.25-1.0; timm ships 1.25
MAX_EXPORT_RESOLUTION = 2048
# Quantized ops: the arithmetic. Everything else (decoding, normalisation, flips) stays float.
INT8_OP_TYPES = ("Conv", "Gemm", "MatMul", "Clip", "Relu")
CALIBRATION_BATCH = 16
DEFAULT_CALIBRATION_COUNT = 256
CALIBRATION_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
METADATA_KEY = "mobilenets"  # ONNX metadata_props key holding a JSON dict about the exported model


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every BatchNorm folded into its conv (weights and a new bias).

    Saves one pass over each activation map in eager PyTorch; ONNX Runtime does the same fusion
    by itself. The copy keeps its structure (BN becomes Identity), so `features()` still works,
    but it is for inference only: its state dict no longer loads into a fresh model.
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, ConvBNAct):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return fused


def export_onnx(
    model: nn.Module,
    out: str | os.PathLike,
    *,
    resolution: int = 224,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    output_names: Sequence[str] | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write `model` (in eval mode, on the CPU) as ONNX taking `images` of shape (N, 3, R, R).

    A bare MobileNet's output is `logits` (or `features` without a classifier); a task model names
    its outputs (`output_names`), each with a dynamic batch axis. `metadata` (a JSON-able dict) is
    stored in the file's metadata_props under `mobilenets`, for whoever loads it.
    """
    if resolution < MIN_INPUT_SIZE:
        raise ValueError(f"resolution must be at least {MIN_INPUT_SIZE} px, got {resolution}")
    out = Path(out)
    was_training = model.training
    model.eval()
    example = torch.zeros(1, 3, resolution, resolution, device=next(model.parameters()).device)
    if output_names is None:
        output_names = ["logits" if getattr(model, "num_classes", 1) else "features"]
    output_names = list(output_names)
    dynamic_axes = (
        {"images": {0: "batch"}, **{name: {0: "batch"} for name in output_names}} if dynamic_batch else None
    )
    try:
        with atomic_write(out) as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")
            # The spatial size is fixed on purpose; the tracer's warnings about it are expected.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=False, opset_version=opset,
                input_names=["images"], output_names=output_names, dynamic_axes=dynamic_axes,
            )
            if metadata is not None:
                set_metadata(tmp, metadata)
    finally:
        model.train(was_training)
    return out


def set_metadata(path: str | os.PathLike, metadata: dict) -> None:
    """Store `metadata` as JSON in the model's metadata_props (in place)."""
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = json.dumps(metadata, sort_keys=True)
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def read_metadata(session_or_path) -> dict:
    """The `mobilenets` metadata of an ONNX file or an open onnxruntime session ({} if none)."""
    if isinstance(session_or_path, (str, os.PathLike)):
        import onnx

        model = onnx.load(str(session_or_path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
    else:
        props = session_or_path.get_modelmeta().custom_metadata_map
    return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}


# -- int8 ---------------------------------------------------------------------------------------
def quantize_int8(
    fp32_path: str | os.PathLike,
    out: str | os.PathLike,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    op_types: Sequence[str] = INT8_OP_TYPES,
    batch_size: int = CALIBRATION_BATCH,
    reduce_range: bool | None = None,
) -> Path:
    """Static int8 of an fp32 ONNX file: `quant_pre_process`, then QDQ with MinMax ranges.

    `calibration` is (N, 3, H, W) float32, preprocessed exactly as the model's inputs are.
    S8 weights (per output channel unless `per_channel=False`), U8 activations. `reduce_range` (7-bit
    weights) defaults to this CPU's need (`needs_reduced_range`). Percentile (99.99) or entropy ranges
    gained nothing consistent on the trained classifier of tests/test_deploy.py. The file's `mobilenets`
    metadata is kept and gains the quantization settings.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or not len(calibration):
        raise ValueError(f"calibration must be a non-empty (N, 3, H, W) array, got {calibration.shape}")
    if reduce_range is None:
        reduce_range = needs_reduced_range()
    metadata = read_metadata(fp32_path)
    input_name = "images"

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = (
                calibration[i : i + batch_size] for i in range(0, len(calibration), batch_size)
            )

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="mobilenets-int8-") as folder, atomic_write(out) as tmp:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared), str(tmp), Batches(),
            quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types), calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
        metadata["int8"] = {
            "per_channel": per_channel, "calibration_images": int(len(calibration)),
            "format": "QDQ", "activations": "U8", "weights": "S7" if reduce_range else "S8",
            "method": "MinMax",
        }  # fmt: skip
        set_metadata(tmp, metadata)
    return out


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str] | None:
    """The x86 feature flags of the first CPU in `cpuinfo`; None where unknown (another OS or an ARM CPU)."""
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def needs_reduced_range(flags: set[str] | None = None) -> bool:
    """Whether int8 weights should keep to 7 bits on this CPU: an x86 CPU without VNNI.

    Without VNNI, ONNX Runtime's U8S8 kernels multiply with `vpmaddubsw`, which adds each pair of
    u8 x s8 products in 16 bits and saturates (255 * 127 * 2 > 32767); 7-bit weights cannot overflow
    there, which is onnxruntime's own advice for such CPUs. VNNI (`vpdpbusd`, also present with
    AMX) accumulates in 32 bits, so full 8-bit weights are exact and kept. Unknown flags (not
    Linux, or an ARM CPU, whose dot-product kernels do not saturate) keep 8 bits.
    """
    flags = cpu_flags() if flags is None else flags
    return flags is not None and "avx2" in flags and not flags & VNNI_FLAGS


def folder_images(
    folder: str | os.PathLike,
    load: Callable[[Path], np.ndarray],
    *,
    limit: int = DEFAULT_CALIBRATION_COUNT,
    extensions: Sequence[str] = CALIBRATION_EXTENSIONS,
    errors: tuple[type[BaseException], ...] = (OSError, ValueError),
) -> np.ndarray:
    """Up to `limit` images under `folder` (recursively, in sorted order) through `load`, stacked.

    `load(path)` returns one CHW float32 array preprocessed as the model's inputs; files it fails
    on with one of `errors` are skipped. A folder without a single readable image is an error
    naming it and what was tried.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: calibration folder not found")
    candidates = sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    images, failures = [], []
    for path in candidates:
        if len(images) >= limit:
            break
        try:
            images.append(np.asarray(load(path), dtype=np.float32))
        except errors as err:
            failures.append(f"{path.name} ({err})" if str(path) not in str(err) else str(err))
    if not images:
        tried = f"{len(candidates)} image file(s), none readable" if candidates else "no image files"
        detail = f": {'; '.join(failures[:3])}" if failures else ""
        raise ValueError(
            f"{folder}: no readable calibration image ({tried}; looked for {'/'.join(extensions)}){detail}"
        )
    if failures:
        warnings.warn(f"{folder}: skipped {len(failures)} unreadable calibration image(s)", stacklevel=2)
    return np.stack(images)


def centre_crop_input(path: Path, resolution: int) -> np.ndarray:
    """An image file -> CHW float32 in [-1, 1]: shorter side to resolution/0.875, centre crop (PIL only)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        short = round(resolution / 0.875)
        scale = short / min(img.size)
        img = img.resize((max(short, round(img.width * scale)), max(short, round(img.height * scale))),
                         Image.BILINEAR)  # fmt: skip
        left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
        array = np.asarray(img.crop((left, top, left + resolution, top + resolution)), dtype=np.float32)
    return (array / 127.5 - 1.0).transpose(2, 0, 1)


def synthetic_inputs(count: int, resolution: int, *, seed: int = 0) -> np.ndarray:
    """Smooth random images in [-1, 1] (8x8 noise upsampled, plus fine noise): calibration for a model
    that has no data of its own (a bare backbone being timed). A trained model calibrates on its data."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 8, 8, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(coarse, size=(resolution, resolution), mode="bilinear")
    images += 0.1 * torch.randn(images.shape, generator=generator)
    return images.clamp_(-1, 1).numpy()


def onnx_session(path: str | os.PathLike, *, threads: int | None = None):
    """An onnxruntime CPU session with full graph optimisation (conv+BN+clip fusion)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray) -> np.ndarray:
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.float32)}
    return session.run(None, feed)[0]


def main_export(argv: Sequence[str] | None = None) -> int:
    from backbone import mobilenet_v1

    parser = argparse.ArgumentParser(prog="mobilenets export", description="Export MobileNet v1 to ONNX.")
    parser.add_argument("--format", choices=("onnx",), default="onnx")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000, help="0: export pooled features")
    parser.add_argument("--weights", help="our checkpoint, a timm state dict or a TF-slim .npz")
    parser.add_argument("--tf-padding", action="store_true", help="TF 'SAME' padding (for TF-slim weights)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    add_int8_arguments(parser)
    args = parser.parse_args(argv)
    check_int8_arguments(parser, args)
    # bounds: a width of 100 builds a 4-billion-parameter model that takes minutes and gigabytes to export
    if not 0 < args.width_mult <= MAX_EXPORT_WIDTH_MULT:
        parser.error(f"--width-mult must be in (0, {MAX_EXPORT_WIDTH_MULT}], got {args.width_mult}")
    if not MIN_INPUT_SIZE <= args.resolution <= MAX_EXPORT_RESOLUTION:
        parser.error(
            f"--resolution must be in [{MIN_INPUT_SIZE}, {MAX_EXPORT_RESOLUTION}], got {args.resolution}"
        )
    try:
        model = mobilenet_v1(
            width_mult=args.width_mult, num_classes=args.num_classes, weights=args.weights,
            tf_padding=args.tf_padding,
        )
        metadata = {"task": "backbone", "image_size": args.resolution, "width_mult": args.width_mult}
        if not args.int8:
            path = export_onnx(
                model, args.out, resolution=args.resolution, opset=args.opset, metadata=metadata
            )
        else:
            if args.calibration:
                calibration = folder_images(
                    args.calibration, lambda p: centre_crop_input(p, args.resolution),
                    limit=args.calibration_count,
                )  # fmt: skip
            else:
                calibration = synthetic_inputs(args.calibration_synthetic, args.resolution)
            with tempfile.TemporaryDirectory(prefix="mobilenets-export-") as folder:
                fp32 = export_onnx(model, Path(folder) / "fp32.onnx", resolution=args.resolution,
                                   opset=args.opset, metadata=metadata)  # fmt: skip
                path = quantize_int8(fp32, args.out, calibration, per_channel=not args.per_tensor)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB; input images: N x 3 x {args.resolution} x "
          f"{args.resolution}{'; int8' if args.int8 else ''})")
    return 0


def add_int8_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("int8 (ONNX Runtime static quantization, QDQ)")
    group.add_argument("--int8", action="store_true", help="write a statically quantized int8 model")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--calibration", type=Path, metavar="DIR", help="calibration images (recursive)")
    source.add_argument("--calibration-synthetic", type=int, metavar="N",
                        help="calibrate on N generated images (a task model: its own synthetic recipe)")
    group.add_argument("--calibration-count", type=int, default=DEFAULT_CALIBRATION_COUNT,
                       help="at most this many images from --calibration DIR")
    group.add_argument("--per-tensor", action="store_true",
                       help="per-tensor weight scales (for comparison only: they wreck MobileNet accuracy)")


def check_int8_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.int8 and not (args.calibration or args.calibration_synthetic):
        parser.error("--int8 needs calibration images: --calibration DIR or --calibration-synthetic N")
    if not args.int8 and (args.calibration or args.calibration_synthetic or args.per_tensor):
        parser.error("--calibration, --calibration-synthetic and --per-tensor only apply with --int8")
    if args.calibration_synthetic is not None and args.calibration_synthetic < 1:
        parser.error(f"--calibration-synthetic must be at least 1, got {args.calibration_synthetic}")
