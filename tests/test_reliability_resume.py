"""Killed runs resume exactly (issue 16).

A `fit` killed with SIGKILL mid-epoch and resumed with `--ckpt_path last` continues the same run
directory (metrics appended without the killed epoch's partial rows, TensorBoard curves without its
steps, the best score kept) and ends with exactly the weights, step counter, learning-rate schedule
and metrics of an uninterrupted run (deterministic mode, CPU, `num_workers=0`), for fine-grained
classification and detection. Nothing but `--trainer.deterministic=true` asks for the exact replay.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
EPOCHS, BATCHES = 3, 3  # steps 0-2 are epoch 0, 3-5 epoch 1, 6-8 epoch 2
KILL_AT_STEP = 4  # mid-epoch 1: last.ckpt holds the end of epoch 0

COMMON = [
    "--seed_everything=0",
    "--trainer.deterministic=true",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.num_sanity_val_steps=0",
    f"--trainer.max_epochs={EPOCHS}",
    f"--trainer.limit_train_batches={BATCHES}",
    "--trainer.limit_val_batches=1",
    "--trainer.log_every_n_steps=1",
    "--data.num_workers=0",
    "--model.backbone.width_mult=0.25",
]
TASKS = {
    "finegrained": [
        "--data.image_size=32",
        "--data.batch_size=4",
        "--data.synthetic_classes=4",
        "--data.synthetic_train_per_class=6",
        "--data.synthetic_val_per_class=1",
    ],
    "detection": [
        "--data.root=shapes",
        "--data.synthetic_images=30",
        "--data.synthetic_image_size=96",
        "--data.image_size=96",
        "--data.batch_size=4",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.max_time=null",
        "--model.cpu_threads=1",
    ],
}


class KillAtStep(Callback):
    """SIGKILLs its own process when training reaches `step`: a crash no handler can soften. The loggers
    are flushed first, so the killed epoch's partial metrics and curves are on disk, as they would be
    in a run killed long after its last flush."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            for logger in trainer.loggers:
                logger.save()
            os.kill(os.getpid(), signal.SIGKILL)


def _fit(cwd: Path, task: str, *extra: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(REPO), str(REPO / "tests")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    env.pop("MOBILENETS_RUN_VERSION", None)
    command = [sys.executable, "-c", "import sys; from tasks.cli import main; sys.exit(main(sys.argv[1:]))",
               task, "fit", *COMMON, *TASKS[task], *extra]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _wall_clock(key: str) -> bool:
    """Metrics that time the run (`val/minutes`) differ between any two runs."""
    return any(word in key for word in ("minutes", "seconds", "time", "per_s"))


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The run's TensorBoard curves as TensorBoard shows them (purged steps hidden): tag -> (step, value)s."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(run), size_guidance={SCALARS: 0}).Reload()  # 0: keep every point
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if not _wall_clock(tag)}  # fmt: skip


def _close(a: str | float, b: str | float) -> bool:
    """Equal, or numbers equal within float tolerance (TensorBoard keeps float32); "" is a CSV blank."""
    return a == b or (a != "" and b != "" and math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-6))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_killed_fit_resumed_with_ckpt_path_last_ends_as_an_uninterrupted_run(tmp_path, task):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir(), broken.mkdir()
    done = _fit(whole, task)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = _fit(broken, task, '--trainer.callbacks+={"class_path": "test_reliability_resume.KillAtStep", '
                  f'"init_args": {{"step": {KILL_AT_STEP}}}}}')  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (run,) = (broken / "runs" / task).iterdir()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == BATCHES
    killed_steps = {step for curve in _scalars(run).values() for step, _ in curve}
    assert max(killed_steps) >= BATCHES  # the killed epoch's points, which the resume must hide
    resumed = _fit(broken, task, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "won't be reloaded" not in resumed.stderr  # Lightning's warning when "best" restarts

    assert [p.name for p in (broken / "runs" / task).iterdir()] == [run.name]  # the same run continued
    (reference,) = (whole / "runs" / task).iterdir()
    expected = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert got["global_step"] == expected["global_step"] == EPOCHS * BATCHES
    assert got["epoch"] == expected["epoch"]
    assert got["lr_schedulers"] == expected["lr_schedulers"]  # the schedule continued where it was
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    differ = [k for k, v in expected["state_dict"].items() if not torch.equal(v, got["state_dict"][k])]
    assert differ == []

    (callback_key,) = [k for k in expected["callbacks"] if k.startswith("RunCheckpoint")]
    best_expected, best_got = expected["callbacks"][callback_key], got["callbacks"][callback_key]
    assert float(best_got["best_model_score"]) == float(best_expected["best_model_score"])
    assert Path(best_got["best_model_path"]).name == Path(best_expected["best_model_path"]).name

    rows, reference_rows = _metrics(run), _metrics(reference)  # appended, the killed partial epoch dropped
    assert len(rows) == len(reference_rows)
    for row, reference_row in zip(rows, reference_rows, strict=True):
        assert row.keys() == reference_row.keys()
        differ = {key: (row[key], reference_row[key]) for key in row
                  if not _close(row[key], reference_row[key]) and not _wall_clock(key)}  # fmt: skip
        assert differ == {}, f"step {row['step']}"

    curves, reference_curves = _scalars(run), _scalars(reference)  # each step once, as uninterrupted
    assert curves.keys() == reference_curves.keys()
    for tag, reference_curve in reference_curves.items():
        assert [step for step, _ in curves[tag]] == [step for step, _ in reference_curve], tag
        pairs = zip(curves[tag], reference_curve, strict=True)
        differ = [(step, value, want) for (step, value), (_, want) in pairs if not _close(value, want)]
        assert differ == [], tag
