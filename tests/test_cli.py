"""The `mobilenets` entry point and the LightningCLI set-up all tasks share (run on fine-grained)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pytorch_lightning import Trainer

from tasks.cli import main
from tasks.common.lightning_cli import RESEED_CALLBACK, RUN_VERSION_ENV, ReseedEveryEpoch, new_run_version

REPO = Path(__file__).resolve().parents[1]
QUICK = [
    "--trainer.enable_progress_bar=false",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--data.image_size=64",
    "--data.batch_size=8",
    "--data.num_workers=0",
    "--model.backbone.width_mult=0.25",
]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUN_VERSION_ENV, raising=False)
    return tmp_path


def run_dirs(root: Path) -> list[Path]:
    return sorted((root / "runs" / "finegrained").iterdir())


def test_usage_and_unknown_commands(capsys):
    assert main([]) == 0
    assert "finegrained" in capsys.readouterr().out
    assert main(["no-such-task"]) == 2
    assert "unknown command 'no-such-task'" in capsys.readouterr().err
    assert main(["finegrained", "train"]) == 2
    assert "expected one of fit, validate, test, predict" in capsys.readouterr().err


def test_fit_resume_test_predict_round_trip(in_tmp, monkeypatch):
    main(["finegrained", "fit", "--trainer.max_epochs=1", *QUICK])
    (first,) = run_dirs(in_tmp)
    config = yaml.safe_load((first / "config.yaml").read_text())
    assert config["model"]["backbone"]["width_mult"] == 0.25  # the saved config reproduces the run
    assert config["data"]["dataset"] == "synthetic"  # defaults come from configs/finegrained/synthetic.yaml
    last = first / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)  # plain types only: safe to load
    assert checkpoint["global_step"] == 2 and checkpoint["epoch"] == 1  # saved as training ended
    assert checkpoint["hyper_parameters"]["num_classes"] == 24
    assert len(list((first / "checkpoints").glob("best-*.ckpt"))) == 1
    assert (first / "metrics.csv").exists()

    monkeypatch.delenv(RUN_VERSION_ENV)
    main(["finegrained", "fit", "--trainer.max_epochs=2", "--ckpt_path", "last", *QUICK])
    second = run_dirs(in_tmp)[-1]
    assert second == first and len(run_dirs(in_tmp)) == 1  # a resume continues its own run directory
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 4 and resumed["epoch"] == 2  # continued: two epochs done, not restarted

    monkeypatch.delenv(RUN_VERSION_ENV)
    main(["finegrained", "predict", "--ckpt_path=last", "--trainer.limit_predict_batches=1", *QUICK])
    rows = list(csv.reader(open(run_dirs(in_tmp)[-1] / "predictions.csv")))
    assert rows[0][:3] == ["image", "class1", "score1"] and len(rows) == 1 + 8
    scores = [float(rows[1][i]) for i in range(2, 11, 2)]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5


def test_a_runs_saved_config_reused_logs_into_a_new_run(in_tmp, monkeypatch):
    main(["finegrained", "fit", "--trainer.max_epochs=1", *QUICK])
    (first,) = run_dirs(in_tmp)
    written = {name: (first / name).read_bytes() for name in ("config.yaml", "metrics.csv", "hparams.yaml")}

    monkeypatch.delenv(RUN_VERSION_ENV)
    main(["finegrained", "test", "--config", str(first / "config.yaml"),
          "--ckpt_path", str(first / "checkpoints" / "last.ckpt"), "--trainer.limit_test_batches=1"])
    second = run_dirs(in_tmp)[-1]
    assert second != first
    assert {name: (first / name).read_bytes() for name in written} == written  # the fit's record is intact
    assert "test/top1" in (second / "metrics.csv").read_text().splitlines()[0]


def test_runs_started_in_the_same_second_get_their_own_directories(in_tmp):
    names = [new_run_version("finegrained") for _ in range(3)]
    assert len(set(names)) == 3
    assert [p.name for p in run_dirs(in_tmp)] == sorted(names)  # each claimed on disk at once


def test_resume_without_a_run_is_a_clear_error(in_tmp):
    with pytest.raises(SystemExit, match="no runs/finegrained/\\*/checkpoints/last.ckpt"):
        main(["finegrained", "fit", "--ckpt_path", "last", *QUICK])
    assert not (in_tmp / "runs").exists()  # a failed start claims no run directory


def test_print_config_shows_the_task_defaults(in_tmp, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["finegrained", "fit", "--print_config", "--model.optim.name=sgd"])
    assert stop.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["optim"]["name"] == "sgd"
    assert printed["data"]["synthetic_classes"] == 24


@pytest.fixture
def torch_flags(monkeypatch):
    """`--trainer.deterministic` switches torch's process-wide flags; the other tests run without them."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored as it was after the test
    deterministic, benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


@pytest.mark.parametrize(
    ("flags", "reseeds"),
    [
        ([], 0),  # a run's random stream is left as recipes were tuned with it
        (["--trainer.deterministic=true"], 1),
        (["--trainer.deterministic=warn"], 1),
        (["--trainer.deterministic=true", f"--trainer.callbacks+={RESEED_CALLBACK}"], 1),  # listed: not twice
        ([f"--trainer.callbacks+={RESEED_CALLBACK}"], 1),  # still an opt-in without deterministic mode
    ],
    ids=["default", "deterministic", "deterministic-warn", "deterministic-and-listed", "listed"],
)
def test_deterministic_runs_reseed_every_epoch_once(flags, reseeds, in_tmp, monkeypatch, torch_flags):
    fitted = []
    monkeypatch.setattr(Trainer, "fit", lambda trainer, *args, **kwargs: fitted.append(trainer))
    main(["finegrained", "fit", *flags, *QUICK])
    (trainer,) = fitted
    assert sum(isinstance(callback, ReseedEveryEpoch) for callback in trainer.callbacks) == reseeds


@pytest.mark.parametrize(
    "recipe", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").glob("*/*.yaml"))
)
def test_every_shipped_recipe_parses_through_its_tasks_cli(recipe, in_tmp, capsys):
    task = Path(recipe).parent.name.replace("_", "-")
    with pytest.raises(SystemExit) as stop:
        main([task, "fit", "--config", str(REPO / recipe), "--print_config"])
    assert stop.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    for path, value in leaves(yaml.safe_load((REPO / recipe).read_text())):  # each setting kept as written
        found = printed
        for key in path:
            found = found[key]
        assert found == value, (recipe, path)


def leaves(tree: dict, path: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, (*path, key))
        else:
            yield (*path, key), value


@pytest.mark.slow
def test_ddp_two_cpu_processes_see_disjoint_data(tmp_path):
    """The multi-machine path: `--trainer.strategy ddp` with gloo, two ranks on this CPU."""
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    env = dict(os.environ, DDP_PROBE_DIR=str(probe_dir), PYTHONPATH=str(REPO / "tests" / "helpers"))
    env.pop(RUN_VERSION_ENV, None)
    command = [
        str(Path(sys.executable).parent / "mobilenets"),
        "finegrained",
        "fit",
        *QUICK,
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0",
        "--trainer.callbacks+=ddp_probe.RecordSamples",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen = [set(r["fingerprints"]) for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 16  # 2 steps x batch 8, each rank
    assert not seen[0] & seen[1]
    assert len(list((tmp_path / "runs" / "finegrained").iterdir())) == 1  # both ranks agreed on one run dir
