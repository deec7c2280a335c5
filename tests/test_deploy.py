"""Task-model deployment: ONNX exports equal PyTorch, int8 keeps the decisions, the task's own `test`
runs the exported model, and bad inputs fail with clear errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from tasks.cli import TASKS
from tasks.common.lightning_cli import RUN_VERSION_ENV, run_task_cli
from tasks.deploy import (
    RUNNERS,
    TARGET_OF,
    SSDNetwork,
    export_task,
    load_deployed,
    main_export,
    split_runtime_args,
)
from tasks.detection.module import DetectionModule
from tasks.face_attributes.module import FaceAttributesModule
from tasks.face_embedding.module import FaceEmbeddingModule
from tasks.finegrained.module import FineGrainedModule
from tasks.finegrained.synthetic import SyntheticFineGrained
from tasks.geolocation.module import GeolocationModule

BACKBONE = {"width_mult": 0.25}


def calibrated(module: torch.nn.Module, size: int) -> torch.nn.Module:
    """Give every BN real statistics (a fresh BN is the identity and outputs would be ~0)."""
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.momentum = None
    module.train()
    with torch.no_grad():
        for seed in range(2):
            x = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(seed))
            module.detector.backbone(x) if isinstance(module, DetectionModule) else module(x)
    return module.eval()


def save_checkpoint(module, path, data: dict):
    """What Lightning writes, with the task module's own `on_save_checkpoint` additions."""
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "datamodule_hyper_parameters": data}  # fmt: skip
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def images(n: int, size: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def task_model(task: str) -> tuple[torch.nn.Module, int, dict, dict]:
    """A random-weight model of `task` with real BN statistics: (module, input size, data hparams,
    metadata the export must carry)."""
    if task == "finegrained":
        module, size = FineGrainedModule(num_classes=5, backbone=BACKBONE), 64
        return calibrated(module, size), size, {"image_size": size, "dataset": "synthetic"}, {
            "class_names": module.class_names}
    if task == "face-embedding":
        module, size = FaceEmbeddingModule(embedding_dim=16, backbone=BACKBONE), 48
        assert module.embedder.flip_test  # the exported graph includes the mirrored pass
        return calibrated(module, size), size, {"image_size": size}, {"embedding_dim": 16, "flip_test": True}
    if task == "geolocation":
        module, size = GeolocationModule(num_cells=[3, 7, 12], backbone=BACKBONE), 48
        return calibrated(module, size), size, {"image_size": size}, {"num_cells": [3, 7, 12]}
    module, size = FaceAttributesModule(num_attributes=6, backbone=BACKBONE), 56
    return calibrated(module, size), size, {"image_size": size}, {"attribute_names": module.attribute_names}


@pytest.mark.parametrize("task", ["finegrained", "face-embedding", "geolocation", "face-attributes"])
def test_every_exported_fp32_task_model_equals_pytorch(task, tmp_path, capsys):
    """SSD: `test_ssd_export_equals_pytorch_outputs_and_detections` (its detections are compared too)."""
    torch.manual_seed(0)
    module, size, data, metadata = task_model(task)
    ckpt = save_checkpoint(module, tmp_path / "model.ckpt", data)
    out = tmp_path / "model.onnx"
    assert main_export(["--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    assert f"{task} model, fp32" in capsys.readouterr().out
    onnx.checker.check_model(str(out))
    deployed = load_deployed(out)
    assert type(deployed) is RUNNERS[task] and deployed.task == task and not deployed.int8
    assert deployed.image_size == size and metadata.items() <= deployed.metadata.items()
    x = images(3, size)
    with torch.inference_mode():
        expected = getattr(module, TARGET_OF[task].network)(x)  # what `attach_runtime` replaces
    got = deployed(x)
    if task == "geolocation":  # one logits tensor per partition, coarse to fine
        assert isinstance(got, list) and [g.shape[1] for g in got] == [3, 7, 12]
    else:
        expected, got = [expected], [got]
    assert len(got) == len(expected)
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape and want.abs().max() > 0.1
        assert (have - want).abs().max().item() <= 1e-4


def test_ssd_export_equals_pytorch_outputs_and_detections(tmp_path):
    torch.manual_seed(0)
    module = calibrated(DetectionModule(num_classes=3, image_size=96, backbone=BACKBONE), 96)
    ckpt = save_checkpoint(module, tmp_path / "ssd.ckpt", {"image_size": 96})
    deployed = load_deployed(export_task(ckpt, tmp_path / "ssd.onnx"))
    x = images(2, 96)
    with torch.inference_mode():
        boxes, scores = SSDNetwork(module.detector, 96).eval()(x)
        expected = module.detector(list(x))
    got_boxes, got_scores = deployed.run(x)
    assert got_boxes.shape == boxes.shape and got_scores.shape == scores.shape == (2, boxes.shape[1], 4)
    assert (got_boxes - boxes).abs().max().item() <= 1e-4  # normalised coordinates
    assert (got_scores - scores).abs().max().item() <= 1e-4
    detections = deployed(list(x))
    for want, got in zip(expected, detections, strict=True):
        assert len(want["boxes"]) == len(got["boxes"]) > 0
        assert torch.equal(want["labels"], got["labels"])
        assert (want["scores"] - got["scores"]).abs().max().item() <= 1e-4
        assert (want["boxes"] - got["boxes"]).abs().max().item() <= 1e-4 * 96  # pixels


FIT_ARGS = [
    "--data.synthetic_classes=4", "--data.synthetic_train_per_class=200", "--data.synthetic_val_per_class=50",
    "--data.image_size=64", "--data.batch_size=32", "--data.num_workers=0", "--trainer.max_epochs=18",
    "--trainer.max_time=null", "--trainer.enable_progress_bar=false", "--model.optim.lr=0.05",
    "--model.optim.warmup_epochs=1", "--model.cpu_threads=1",
]  # fmt: skip


def test_int8_keeps_a_trained_classifiers_decisions_and_the_task_test_scores_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit = run_task_cli(TASKS["finegrained"], ["fit", *FIT_ARGS])
    (ckpt,) = (tmp_path / "runs" / "finegrained").glob("*/checkpoints/last.ckpt")
    # 4 classes: well past chance (0.68 measured; chance 0.25)
    assert fit.trainer.callback_metrics["val/top1"] > 0.6
    fp32 = load_deployed(export_task(ckpt, tmp_path / "fg.onnx"))
    assert main_export(["--checkpoint", str(ckpt), "--int8", "--calibration-synthetic", "256",
                        "--out", str(tmp_path / "fg-int8.onnx")]) == 0  # fmt: skip
    int8 = load_deployed(tmp_path / "fg-int8.onnx")
    assert int8.int8 and int8.metadata["int8"]["per_channel"]
    graph = onnx.load(str(tmp_path / "fg-int8.onnx")).graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) > 10

    held_out = SyntheticFineGrained(4, 100, size=64, split="test")  # 400 images the model never saw
    x = torch.stack([held_out[i][0] for i in range(len(held_out))])
    agree = (int8(x).argmax(1) == fp32(x).argmax(1)).float().mean().item()
    # Measured: 0.965 on this 68 %-val model, 0.9875 on an 87 % one, 0.993 on the fine-grained recipe's
    # trained model (960 test images). A CI-sized model's low-margin decisions flip more often, so the
    # 98 % bar of the recipe model is 95 % here.
    assert agree >= 0.95, f"int8 agrees with fp32 on {agree:.3f} of top-1 decisions"

    # The task's own test command, on PyTorch, on the fp32 export and on the int8 one.
    scores = {}
    for runtime, model in (("torch", None), ("onnx", "fg.onnx"), ("onnx-int8", "fg-int8.onnx")):
        monkeypatch.delenv(RUN_VERSION_ENV, raising=False)
        extra = ["--runtime", runtime] + (["--model", str(tmp_path / model)] if model else [])
        test = run_task_cli(TASKS["finegrained"], ["test", "--ckpt_path", str(ckpt), *FIT_ARGS, *extra])
        scores[runtime] = test.trainer.callback_metrics["test/top1"].item()
    assert scores["onnx"] == pytest.approx(scores["torch"], abs=1e-6)
    assert abs(scores["onnx-int8"] - scores["torch"]) <= 0.03, scores


def test_runtime_without_a_model_exports_the_checkpoint_and_checks_precision(tmp_path, monkeypatch):
    torch.manual_seed(0)
    module = calibrated(FineGrainedModule(num_classes=4, backbone=BACKBONE), 48)
    ckpt = save_checkpoint(module, tmp_path / "fg.ckpt", {"image_size": 48})
    export_task(ckpt, tmp_path / "fg.onnx")
    from tasks.deploy import DeployError, attach_runtime

    with pytest.raises(DeployError, match="an fp32 model, but --runtime is onnx-int8"):
        attach_runtime(module, "onnx-int8", model=tmp_path / "fg.onnx")
    with pytest.raises(DeployError, match="a finegrained model, but this is `mobilenets face-embedding`"):
        face = FaceEmbeddingModule(embedding_dim=8, backbone=BACKBONE)
        attach_runtime(face, "onnx", model=tmp_path / "fg.onnx")
    x = images(2, 48)
    with torch.inference_mode():
        expected = module(x)
    deployed = attach_runtime(module, "onnx", ckpt_path=ckpt, out_dir=tmp_path / "run")
    assert (tmp_path / "run" / "model.onnx").is_file()
    assert (module(x) - expected).abs().max().item() <= 1e-4  # the module's forward now runs ORT
    assert module.deployed_model is deployed


def test_split_runtime_args_leaves_lightnings_model_options():
    rest, runtime = split_runtime_args(["test", "--runtime", "onnx-int8", "--model", "m.onnx", "--model.lr=1",
                                        "--model", "cfg.yaml"])  # fmt: skip
    assert runtime == ("onnx-int8", "m.onnx")
    assert rest == ["test", "--model.lr=1", "--model", "cfg.yaml"]
    assert split_runtime_args(["test"]) == (["test"], ("torch", None))
    with pytest.raises(SystemExit, match="must be one of"):
        split_runtime_args(["test", "--runtime=tflite"])
    with pytest.raises(SystemExit, match="needs|runs with"):
        split_runtime_args(["test", "--model=m.onnx"])


def test_unrecognised_checkpoints_and_unreadable_calibration_are_clear_errors(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    torch.save({"state_dict": {}, "hyper_parameters": {"hidden": 3}, "backbone_prefix": "trunk."},
               tmp_path / "other.ckpt")  # fmt: skip
    with pytest.raises(SystemExit):
        main_export(["--checkpoint", str(tmp_path / "other.ckpt"), "--out", str(out)])
    err = capsys.readouterr().err
    assert "cannot recognise the task" in err and "'trunk.'" in err and "finegrained" in err

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bare.pth")
    with pytest.raises(SystemExit):
        main_export(["--checkpoint", str(tmp_path / "bare.pth"), "--out", str(out)])
    assert "not a Lightning checkpoint" in capsys.readouterr().err

    module = calibrated(FineGrainedModule(num_classes=4, backbone=BACKBONE), 48)
    ckpt = save_checkpoint(module, tmp_path / "fg.ckpt", {"image_size": 48})
    folder = tmp_path / "calibration"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("no images here")
    with pytest.raises(SystemExit):
        main_export(["--checkpoint", str(ckpt), "--int8", "--calibration", str(folder), "--out", str(out)])
    err = capsys.readouterr().err
    assert f"{folder}: no readable calibration image (1 image file(s), none readable" in err
    assert "broken.jpg" in err

    with pytest.raises(SystemExit):
        main_export(["--checkpoint", str(ckpt), "--int8", "--out", str(out)])
    assert "--int8 needs calibration images" in capsys.readouterr().err
    torch.save({**torch.load(ckpt, weights_only=True),
                "datamodule_hyper_parameters": {"dataset": "stanford_dogs", "image_size": 48}},
               tmp_path / "dogs.ckpt")  # fmt: skip
    with pytest.raises(SystemExit):  # a real-data model is not calibrated on the synthetic generator
        main_export(["--checkpoint", str(tmp_path / "dogs.ckpt"), "--int8", "--calibration-synthetic", "8",
                     "--out", str(out)])  # fmt: skip
    assert "calibrate on its images with --calibration DIR" in capsys.readouterr().err
    assert not out.exists()


def test_calibration_folder_images_are_read_the_tasks_way(tmp_path):
    from PIL import Image

    module = calibrated(FineGrainedModule(num_classes=4, backbone=BACKBONE), 48)
    ckpt = save_checkpoint(module, tmp_path / "fg.ckpt", {"image_size": 48})
    folder = tmp_path / "calibration" / "sub"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"x")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        path = export_task(ckpt, tmp_path / "q.onnx", int8=True, calibration=tmp_path / "calibration")
    assert load_deployed(path).metadata["int8"]["calibration_images"] == 6


FACE_ARGS = [
    "--trainer.enable_progress_bar=false", "--data.synthetic.train_identities=16",
    "--data.synthetic.images_per_identity=4", "--data.synthetic.eval_identities=20",
    "--data.synthetic.eval_images_per_identity=3", "--data.pairs_per_fold=3", "--data.image_size=32",
    "--data.p=4", "--data.k=2", "--data.similar_identities=2", "--data.batches_per_epoch=2",
    "--data.num_workers=0", "--model.backbone.width_mult=0.25", "--model.embedding_dim=16",
]  # fmt: skip


def test_face_test_and_predict_on_the_exported_embedder_match_pytorch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_task_cli(TASKS["face-embedding"], ["fit", "--trainer.max_steps=2", "--trainer.max_time=null",
                                           "--model.precise_bn_batches=2", *FACE_ARGS])  # fmt: skip
    (ckpt,) = (tmp_path / "runs" / "face-embedding").glob("*/checkpoints/last.ckpt")
    reports, embeddings = {}, {}
    for runtime in ("torch", "onnx"):  # onnx without --model: the checkpoint is exported first
        for command in ("test", "predict"):
            monkeypatch.delenv(RUN_VERSION_ENV, raising=False)
            args = [command, "--ckpt_path", str(ckpt), *FACE_ARGS, "--runtime", runtime]
            cli = run_task_cli(TASKS["face-embedding"], args)
            run_dir = tmp_path / cli.trainer.log_dir
            if command == "test":
                reports[runtime] = json.loads((run_dir / "test_metrics.json").read_text())
            else:
                with np.load(run_dir / "embeddings.npz", allow_pickle=False) as saved:
                    embeddings[runtime] = (list(saved["paths"]), saved["outputs"])
    assert (tmp_path / cli.trainer.log_dir / "model.onnx").is_file()
    assert reports["onnx"] == pytest.approx(reports["torch"], abs=1e-4)  # the threshold moves ~1e-6
    assert embeddings["onnx"][0] == embeddings["torch"][0] and len(embeddings["onnx"][0]) == 60
    assert np.abs(embeddings["onnx"][1] - embeddings["torch"][1]).max() <= 1e-4


def test_detection_test_on_the_exported_ssd_writes_the_pytorch_detections(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = ["--data.root=synth", "--data.synthetic_images=12", "--data.synthetic_image_size=96",
            "--data.image_size=96", "--data.batch_size=4", "--data.num_workers=0",
            "--trainer.enable_progress_bar=false"]  # fmt: skip
    run_task_cli(TASKS["detection"], ["fit", "--trainer.max_steps=2", "--trainer.max_time=null",
                                      "--trainer.check_val_every_n_epoch=5", *data])  # fmt: skip
    (ckpt,) = (tmp_path / "runs" / "detection").glob("*/checkpoints/last.ckpt")
    assert main_export(["--checkpoint", str(ckpt), "--out", str(tmp_path / "ssd.onnx")]) == 0
    detections = {}
    for extra in ([], ["--runtime", "onnx", "--model", str(tmp_path / "ssd.onnx")]):
        monkeypatch.delenv(RUN_VERSION_ENV, raising=False)
        cli = run_task_cli(TASKS["detection"], ["test", "--ckpt_path", str(ckpt), *data, *extra])
        found = json.loads((tmp_path / cli.trainer.log_dir / "test" / "detections.json").read_text())
        detections[bool(extra)] = found
    torch_found, onnx_found = detections[False], list(detections[True])
    assert len(onnx_found) == len(torch_found) > 0
    for want in torch_found:  # an untrained SSD ties scores, so detections are matched, not sorted
        match = next(got for got in onnx_found if same_detection(want, got))
        onnx_found.remove(match)


def same_detection(want: dict, got: dict) -> bool:
    return (
        (got["image_id"], got["category_id"]) == (want["image_id"], want["category_id"])
        and abs(got["score"] - want["score"]) <= 1e-4
        and max(abs(a - b) for a, b in zip(got["bbox"], want["bbox"], strict=True)) <= 1e-2
    )
