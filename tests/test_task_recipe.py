"""The task recipe (tasks/README.md) is real: a toy fourth task built from it alone runs fit, test and
predict through the CLI, and a checkpoint of any task starts any other task's backbone."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from backbone import MobileNetV1
from tasks.cli import TASKS
from tasks.common.lightning_cli import RUN_VERSION_ENV, TaskSpec, load_object, run_task_cli

HELPERS = Path(__file__).resolve().parent / "helpers"
TOY = TaskSpec(
    name="toy",
    module="toy_task:ToyModule",
    datamodule="toy_task:ToyDataModule",
    monitor="val/top1",
    links=(("num_classes", "num_classes"),),
)
QUIET = [
    "--trainer.enable_progress_bar=false",
    "--trainer.accelerator=cpu",
    "--model.backbone.width_mult=0.25",
    "--model.backbone.bn_momentum=0.5",  # running statistics that keep up with 60 steps
    "--model.optim.name=adamw",
    "--model.optim.lr=0.003",
]


@pytest.fixture
def toy_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(HELPERS))
    monkeypatch.delenv(RUN_VERSION_ENV, raising=False)
    return tmp_path


def test_a_task_built_from_the_recipe_runs_fit_test_and_predict(toy_cwd, monkeypatch):
    fit = run_task_cli(TOY, ["fit", "--trainer.max_epochs=10", *QUIET])
    assert fit.model.backbone.classifier.out_features == 3  # the class count came from the data
    run = Path(fit.trainer.log_dir)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["backbone_prefix"] == "backbone."

    monkeypatch.delenv(RUN_VERSION_ENV)
    test = run_task_cli(TOY, ["test", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), *QUIET])
    assert test.trainer.callback_metrics["test/top1"] > 0.6  # chance is 1/3

    monkeypatch.delenv(RUN_VERSION_ENV)
    predict = run_task_cli(TOY, ["predict", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), *QUIET])
    with open(Path(predict.trainer.log_dir) / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 48 and rows[0]["image"] == "toy/0000"
    expected = ["red", "green", "blue"] * 16  # the label of item i is i % 3
    assert sum(row["class"] == want for row, want in zip(rows, expected, strict=True)) > 0.6 * 48


# Each registered task, built small and untrained: what its constructor needs beyond the backbone.
TASK_ARGUMENTS = {
    "finegrained": {"num_classes": 7},
    "detection": {"num_classes": 3, "image_size": 128},
    "face-embedding": {"embedding_dim": 16},
    "face-attributes": {"num_attributes": 5},
    "geolocation": {"num_cells": [3, 7]},
}


def build(task: str, **backbone) -> torch.nn.Module:
    module_class = load_object(TASKS[task].module)
    return module_class(backbone={"width_mult": 0.25, **backbone}, **TASK_ARGUMENTS[task])


def test_every_task_is_listed_with_its_construction_arguments():
    assert set(TASK_ARGUMENTS) == set(TASKS)


@pytest.mark.parametrize("source", sorted(TASK_ARGUMENTS))
def test_a_checkpoint_of_any_task_starts_every_other_tasks_backbone(source, tmp_path):
    torch.manual_seed(0)
    trained = build(source)
    assert isinstance(trained.backbone, MobileNetV1)
    saved = {"state_dict": trained.state_dict()}
    trained.on_save_checkpoint(saved)
    prefix = trained.backbone_prefix + "layers."
    layers = [key for key in saved["state_dict"] if key.startswith(prefix)]
    assert len(layers) == len(trained.backbone.layers.state_dict())  # the prefix names exactly the MobileNet
    torch.save(saved, tmp_path / "source.ckpt")
    for target in sorted(TASK_ARGUMENTS):
        started = build(target, weights=str(tmp_path / "source.ckpt"))
        for name, value in trained.backbone.layers.state_dict().items():
            assert torch.equal(started.backbone.layers.state_dict()[name], value), (source, target, name)


def test_schedule_by_time_anneals_the_learning_rate_as_the_budget_runs_out(toy_cwd):
    budget = [
        "--trainer.max_epochs=-1",
        "--trainer.max_time=00:00:00:06",
        "--model.optim.schedule_by=time",
        "--model.optim.lr=0.01",
    ]
    fit = run_task_cli(TOY, ["fit", *QUIET, *budget])
    trainer = fit.trainer
    assert trainer.current_epoch >= 2  # stopped by the clock, not by an epoch count
    final_lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert final_lr < 0.1 * 0.01  # the cosine reached (almost) zero as time ran out


def test_schedule_by_time_needs_a_time_budget(toy_cwd):
    with pytest.raises(ValueError, match="schedule_by: time needs trainer.max_time"):
        run_task_cli(TOY, ["fit", "--trainer.max_epochs=1", "--model.optim.schedule_by=time", *QUIET])
