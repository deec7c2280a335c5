"""Deployment speed: every runtime of the backbone and of each task model, timed side by side in one process.

Candidates: timm's `mobilenetv1_100` in eager PyTorch (the reference every ratio is taken to), ours in
eager PyTorch (NCHW), ours channels-last with BatchNorm folded, `torch.compile` (with `--compile`;
inductor's compile takes minutes on 2 cores), ONNX Runtime fp32 and ONNX Runtime static int8 (QDQ,
per-channel; `tasks.common.deploy` / `backbone.export.quantize_int8`), and, when the optional `openvino` extra
is installed (`pip install -e .[openvino]`), OpenVINO fp32 on the same ONNX file, OpenVINO on ORT's
QDQ int8 file and OpenVINO + NNCF int8 (`nncf.quantize`, same calibration images); without it those
rows are skipped with a note. Each model is timed at batch 1 and 32 and at 1 and 2 threads; rounds
are interleaved across candidates so a change in machine load hits all of them alike, and the figure
is the median call time.

The machine's practical peak is measured in the same rounds by two 1024^3 matmul probes on the same
thread count: torch fp32 GEMM for the fp32 candidates, and ONNX Runtime `MatMulInteger` (U8 x S8, the
VNNI kernel its int8 convolutions use) for the int8 ones. Each candidate reports its achieved
GFLOP/s (`2 x mult-adds x batch / time`, an int8 mult-add counted as two ops too) and that as a share
of its precision's probe.

Task models are the recipes' networks at the recipes' sizes (fine-grained α 0.25 at 64 px, SSD α 0.25
at 192 px, face embedder α 0.25 at 80 px, flip test included, PlaNet α 0.25 at 64 px over three
partitions, the face-attribute student α 0.25 at 128 px): trained checkpoints with
`--checkpoint-finegrained` and friends, otherwise random weights with BatchNorm statistics calibrated
on random images (a fresh BN is the identity, activations turn denormal and the CPU crawls, which
would time denormals, not networks). timm has no task models: their ratios are to our eager model.

    flock /tmp/mobilenets-cpu.lock python benchmarks/deploy_speed.py --json deploy_speed.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from timing import calibrate_batchnorm, eager, time_interleaved  # benchmarks/ is on the path
from torch import nn

from backbone import mobilenet_v1
from backbone.complexity import format_table, profile
from backbone.export import export_onnx, fuse_for_inference, onnx_session, quantize_int8, synthetic_inputs

TIMM = "timm eager fp32"
OURS = "ours eager fp32"
RUNTIMES = (TIMM, OURS, "ours channels-last, BN folded", "torch.compile", "ORT fp32", "ORT int8",
            "OpenVINO fp32", "OpenVINO on ORT int8", "OpenVINO+NNCF int8")
INT8 = {"ORT int8", "OpenVINO on ORT int8", "OpenVINO+NNCF int8"}
PROBE_FP32, PROBE_INT8 = "probe fp32 GEMM", "probe int8 GEMM"
PROBE_SIDE = 1024


def task_networks(args) -> dict[str, tuple[nn.Module, int, list[str]]]:
    """name -> (network as exported, input size, output names) for each task model asked for."""
    from tasks.common import deploy
    from tasks.export_cli import deployments

    networks = {}
    for task in args.tasks:
        checkpoint = getattr(args, f"checkpoint_{task.replace('-', '_')}")
        if checkpoint:
            saved = deploy.read_checkpoint(checkpoint)
            deployment = deploy.recognise_task(saved, deployments(), checkpoint)
            module = deploy.load_task_module(saved, deployment, checkpoint)
            data = saved.get("datamodule_hyper_parameters") or {}
            exportable = deployment.exportable(module, data, checkpoint)
        else:
            exportable = random_task(task)
        networks[task] = (exportable.network.eval(), exportable.image_size, exportable.output_names)
    return networks


# the recipes' networks at the recipes' sizes: (module, constructor arguments, input size)
RANDOM_TASKS = {
    "finegrained": ("tasks.finegrained.module:FineGrainedModule", {"num_classes": 24}, 64),
    "detection": ("tasks.detection.module:DetectionModule", {"num_classes": 5, "image_size": 192}, 192),
    "face-embedding": ("tasks.face_embedding.module:FaceEmbeddingModule", {"embedding_dim": 128}, 80),
    "geolocation": ("tasks.geolocation.module:GeolocationModule", {"num_cells": [24, 80, 240]}, 64),
    "face-attributes": ("tasks.face_attributes.module:FaceAttributesModule", {"num_attributes": 20}, 128),
}  # fmt: skip


def random_task(task: str):
    from tasks.cli import TASKS
    from tasks.common.lightning_cli import load_object

    path, options, size = RANDOM_TASKS[task]
    module = load_object(path)(**options, backbone={"width_mult": 0.25})
    calibrate_batchnorm(module, size, module.detector.backbone if task == "detection" else None)
    return TASKS[task].deployment().exportable(module, {"image_size": size}, "random")


def compiled(model: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], object]:
    model = torch.compile(fuse_for_inference(model), dynamic=False)
    with torch.inference_mode():
        model(x)  # compile now, outside the timed rounds
    return eager(model, channels_last=False)


def ort(path: Path, threads: int) -> Callable[[torch.Tensor], object]:
    session = onnx_session(path, threads=threads)
    cache: dict[int, np.ndarray] = {}

    def run(x: torch.Tensor) -> object:
        array = cache.get(id(x))
        if array is None:
            array = cache[id(x)] = x.numpy()
        return session.run(None, {"images": array})

    return run


def matmul_probe() -> Callable[[torch.Tensor], object]:
    """torch fp32 GEMM, PROBE_SIDE^3, on torch's current thread count."""
    a, b = torch.randn(PROBE_SIDE, PROBE_SIDE), torch.randn(PROBE_SIDE, PROBE_SIDE)
    return lambda _x: torch.mm(a, b)


def int8_probe(folder: Path, threads: int) -> Callable[[torch.Tensor], object]:
    """ONNX Runtime `MatMulInteger`, U8 activations x S8 weights (the int8 convolutions' pairing)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-128, 128, (PROBE_SIDE, PROBE_SIDE), dtype=np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["x", "w"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [PROBE_SIDE, PROBE_SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [PROBE_SIDE, PROBE_SIDE])], [weight],
    )  # fmt: skip
    path = folder / "int8_probe.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = onnx_session(path, threads=threads)
    x = rng.integers(0, 256, (PROBE_SIDE, PROBE_SIDE), dtype=np.uint8)
    return lambda _x: session.run(None, {"x": x})


def openvino_runners(fp32: Path, int8: Path, calibration: np.ndarray, threads: int, cache: dict) -> dict:
    """OpenVINO fp32, on ORT's QDQ file, and NNCF int8; {} (with a note, once) without the extra."""
    try:
        import openvino as ov
    except ImportError:
        if not cache.get("noted"):
            print("OpenVINO rows skipped: `openvino` is not installed (pip install -e .[openvino])")
            cache["noted"] = True
        return {}
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    models = {"OpenVINO fp32": core.read_model(str(fp32)), "OpenVINO on ORT int8": core.read_model(str(int8))}
    if (fp32, "nncf") not in cache:
        try:
            import nncf

            batches = [calibration[i : i + 16] for i in range(0, len(calibration), 16)]
            cache[fp32, "nncf"] = nncf.quantize(core.read_model(str(fp32)), nncf.Dataset(batches),
                                                subset_size=len(batches))  # fmt: skip (items: batches)
        except ImportError:
            print("OpenVINO+NNCF int8 skipped: `nncf` is not installed")
            cache[fp32, "nncf"] = None
    if cache[fp32, "nncf"] is not None:
        models["OpenVINO+NNCF int8"] = cache[fp32, "nncf"]
    runners = {}
    for name, model in models.items():
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        runners[name] = lambda x, request=request: request.infer({0: x.numpy()}, share_inputs=True)
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", nargs="*", default=list(RANDOM_TASKS), choices=list(RANDOM_TASKS))
    for task in RANDOM_TASKS:
        parser.add_argument(f"--checkpoint-{task}", dest=f"checkpoint_{task.replace('-', '_')}")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--models", nargs="*", help="time only these (e.g. 'backbone 1.0-224')")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--no-openvino", dest="openvino", action="store_false",
                        help="skip the OpenVINO rows even when it is installed")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()

    import timm

    backbone = calibrate_batchnorm(mobilenet_v1(), 224)
    models: dict[str, tuple[nn.Module, int, list[str]]] = {"backbone 1.0-224": (backbone, 224, ["logits"])}
    models |= task_networks(args)
    if args.models:
        models = {name: value for name, value in models.items() if name in args.models}
    timm_model = calibrate_batchnorm(timm.create_model("mobilenetv1_100", pretrained=False), 224)

    results, rows, compiled_models = [], [], {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        files, calibrations, ov_cache = {}, {}, {}
        for name, (network, size, outputs) in models.items():
            stem = name.replace(" ", "_")
            fp32 = export_onnx(network, folder / f"{stem}.onnx", resolution=size, output_names=outputs)
            calibrations[name] = synthetic_inputs(args.calibration_images, size)
            files[name] = (fp32, quantize_int8(fp32, folder / f"{stem}-int8.onnx", calibrations[name]))
        peak_macs = {name: profile(network, torch.zeros(1, 3, size, size)).mult_adds
                     for name, (network, size, _) in models.items()}  # fmt: skip
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, (network, size, _) in models.items():
                fp32, int8 = files[name]
                for batch in args.batches:
                    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
                    x = x.clamp(-1, 1)
                    runners = {PROBE_FP32: matmul_probe(), PROBE_INT8: int8_probe(folder, threads)}
                    if name.startswith("backbone"):
                        runners[TIMM] = eager(timm_model, channels_last=False)
                    runners[OURS] = eager(network, channels_last=False)
                    # every conv+BN+ReLU6 block, the SSD's extra layers too (the face head's BN1d stays)
                    runners["ours channels-last, BN folded"] = eager(fuse_for_inference(network), True)
                    if args.compile and (name, batch) not in compiled_models:  # once per shape
                        compiled_models[name, batch] = compiled(network, x)
                    if args.compile:
                        runners["torch.compile"] = compiled_models[name, batch]
                    runners["ORT fp32"] = ort(fp32, threads)
                    runners["ORT int8"] = ort(int8, threads)
                    if args.openvino:
                        runners |= openvino_runners(fp32, int8, calibrations[name], threads, ov_cache)
                    calls = max(1, 16 // batch)
                    seconds = time_interleaved(runners, x, rounds=args.rounds, calls=calls)
                    peaks = {p: 2 * PROBE_SIDE**3 / seconds.pop(p) for p in (PROBE_FP32, PROBE_INT8)}
                    reference = seconds.get(TIMM, seconds[OURS])
                    for runtime, t in seconds.items():
                        peak = peaks[PROBE_INT8 if runtime in INT8 else PROBE_FP32]  # op/s
                        achieved = 2 * peak_macs[name] * batch / t
                        record = {"model": name, "runtime": runtime, "threads": threads, "batch": batch,
                                  "ms_per_image": 1000 * t / batch, "speedup": reference / t,
                                  "gflops": achieved / 1e9, "peak_share": achieved / peak,
                                  "peak_gflops": peak / 1e9,
                                  "peak_probe": PROBE_INT8 if runtime in INT8 else PROBE_FP32}  # fmt: skip
                        results.append(record)
                        rows.append((name, runtime, threads, batch, f"{record['ms_per_image']:.2f}",
                                     f"{record['speedup']:.2f}x", f"{achieved / 1e9:.1f}",
                                     f"{100 * achieved / peak:.0f} % of {peak / 1e9:.0f}"))  # fmt: skip
                    print(f"  {name}, {threads} thread(s), batch {batch}: done", flush=True)
    print("speedup = time of timm eager fp32 (task models: of ours eager) / time; GFLOP/s = 2 x mult-adds / "
          "time; peak = share of the same run's GEMM probe GOP/s (int8 rows: the int8 probe)")  # fmt: skip
    header = ("model", "runtime", "threads", "batch", "ms/image", "speedup", "GFLOP/s", "peak (GOP/s)")
    print(format_table(header, rows, left=2))
    by = {(r["model"], r["runtime"], r["threads"], r["batch"]): r for r in results}
    key = ("backbone 1.0-224", "ORT int8", 1, 1)
    if key in by:
        int8 = by[key]["ms_per_image"]
        timm_ms = by[("backbone 1.0-224", TIMM, 1, 1)]["ms_per_image"]
        ort_ms = by[("backbone 1.0-224", "ORT fp32", 1, 1)]["ms_per_image"]
        print(f"\nmust show (backbone 1.0-224, batch 1, 1 thread): ORT int8 {int8:.2f} ms = "
              f"{timm_ms / int8:.2f}x timm eager fp32 ({timm_ms:.2f} ms; need >= 4.5x) and "
              f"{ort_ms / int8:.2f}x ORT fp32 ({ort_ms:.2f} ms; need >= 2x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
