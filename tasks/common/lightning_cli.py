"""One LightningCLI set-up for every task: run directories, loggers, checkpoints, default config.

A run lands in `runs/<task>/<timestamp>/` with the saved `config.yaml`, TensorBoard events, a
`metrics.csv`, `checkpoints/{best,last}.ckpt` and whatever plots the task writes. `fit --ckpt_path`
of a run's checkpoint continues that run in place: both logs drop what a killed process logged after
the checkpoint, and a deterministic run replays its epochs exactly. The same command scales out with
`--trainer.strategy ddp --trainer.num_nodes N`: every rank shares the timestamp through the
environment, so all ranks agree on the run directory.
"""

from __future__ import annotations

import csv
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path

from jsonargparse import Namespace
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from backbone.fileio import atomic_write

RUNS_ROOT = Path("runs")
RUN_VERSION_ENV = "MOBILENETS_RUN_VERSION"
RESEED_CALLBACK = "tasks.common.lightning_cli.ReseedEveryEpoch"
CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"


def load_object(spec: str):
    """'package.module:Name' -> the object, imported only when a command needs it (fast start-up)."""
    module_name, _, attribute = spec.partition(":")
    return getattr(import_module(module_name), attribute)


@dataclass(frozen=True)
class TaskSpec:
    """What the CLI needs to know about a task; `tools` are extra commands such as `evaluate`."""

    name: str
    module: str
    datamodule: str
    monitor: str
    mode: str = "max"
    default_config: str = "synthetic.yaml"
    subclass_mode: bool = False
    tools: dict[str, str] = field(default_factory=dict)
    # (data attribute, model argument) pairs filled in once the data module exists, e.g. the class count
    links: tuple[tuple[str, str], ...] = ()
    # "tasks.<task>.deploy:DEPLOYMENT", a `tasks.common.deploy.TaskDeployment`: `mobilenets export
    # --checkpoint` and `--runtime onnx|onnx-int8` for the task; None: not exportable
    deploy: str | None = None

    @property
    def default_config_path(self) -> Path:
        return CONFIG_ROOT / self.name.replace("-", "_") / self.default_config

    def deployment(self):
        return load_object(self.deploy)


def new_run_version(task: str) -> str:
    """A fresh run directory name (a timestamp, suffixed if a run already took it).

    The directory is created here, failing if it exists, so two runs started in the same second
    cannot both claim it.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RUNS_ROOT / task).mkdir(parents=True, exist_ok=True)
    version, n = stamp, 0
    while True:
        try:
            (RUNS_ROOT / task / version).mkdir()
            return version
        except FileExistsError:
            n += 1
            version = f"{stamp}-{n}"


def run_version(task: str, args: list[str], *, resume: str | None = None) -> str:
    """This run's directory name: chosen by the launching process, inherited by DDP workers.

    `--help` and `--print_config` run nothing, so they get a name without claiming a directory.
    `resume` names an existing run that a `fit --ckpt_path` continues in place.
    """
    if "LOCAL_RANK" in os.environ and RUN_VERSION_ENV in os.environ:
        return os.environ[RUN_VERSION_ENV]
    if any(arg in ("-h", "--help") or arg.startswith("--print_config") for arg in args):
        return time.strftime("%Y%m%d-%H%M%S")
    os.environ[RUN_VERSION_ENV] = resume if resume is not None else new_run_version(task)
    return os.environ[RUN_VERSION_ENV]


def trainer_defaults(spec: TaskSpec, version: str) -> dict:
    logger_args = {"save_dir": str(RUNS_ROOT), "name": spec.name, "version": version}
    best_name = "best-{epoch}-{step}"
    return {
        "logger": [
            {"class_path": "tasks.common.lightning_cli.RunTensorBoardLogger", "init_args": logger_args},
            {"class_path": "tasks.common.lightning_cli.RunCSVLogger", "init_args": logger_args},
        ],
        "callbacks": [
            {"class_path": "pytorch_lightning.callbacks.RichProgressBar"},
            {"class_path": "pytorch_lightning.callbacks.LearningRateMonitor"},
            {"class_path": "tasks.common.lightning_cli.LogSkippedImages"},
            {
                "class_path": "tasks.common.checkpoint.RunCheckpoint",
                "init_args": {
                    "monitor": spec.monitor,
                    "mode": spec.mode,
                    "save_last": True,
                    "filename": best_name,
                    "auto_insert_metric_name": False,
                },
            },
        ],
    }


def latest_checkpoint(task: str, runs_root: Path = RUNS_ROOT) -> Path:
    """The newest `last.ckpt` of any run of `task`: what `--ckpt_path last` resumes."""
    candidates = sorted((runs_root / task).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise SystemExit(f"--ckpt_path last: no {runs_root / task}/*/checkpoints/last.ckpt to resume from")
    return candidates[-1]


def checkpoint_arg(args: list[str]) -> str | None:
    """The value of `--ckpt_path` in `args`, if given."""
    for i, arg in enumerate(args):
        if arg.startswith("--ckpt_path="):
            return arg.split("=", 1)[1]
        if arg == "--ckpt_path" and i + 1 < len(args):
            return args[i + 1]
    return None


def check_checkpoint(path: str | os.PathLike) -> dict:
    """Open a checkpoint the way Lightning will, but first: `weights_only=True` (a pickle that would run
    code is refused) and errors that name the file, instead of a traceback from inside `fit`.
    Returns the checkpoint's `global_step` and `epoch`."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--ckpt_path {path}: checkpoint file not found")
    try:
        # memory-mapped where the format allows, so a large checkpoint is not read twice
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling refused"
        raise SystemExit(
            f"--ckpt_path {path}: refused: it holds objects other than tensors and plain types, which "
            f"could run code when loaded ({first})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise SystemExit(f"--ckpt_path {path}: not a readable PyTorch checkpoint ({err})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise SystemExit(f"--ckpt_path {path}: not a Lightning checkpoint (no state_dict)")
    return {"global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch")}


def run_of_checkpoint(path: str | os.PathLike, task: str, runs_root: Path = RUNS_ROOT) -> str | None:
    """The run directory name of `runs/<task>/<run>/checkpoints/<file>.ckpt`; None for a file elsewhere."""
    path = Path(path).resolve()
    task_root = (runs_root / task).resolve()
    if path.parent.name == "checkpoints" and path.parent.parent.parent == task_root:
        return path.parent.parent.name
    return None


def resolve_last_checkpoint(args: list[str], task: str) -> list[str]:
    """Rewrite `--ckpt_path last` to the newest checkpoint of this task's runs."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if arg == "--ckpt_path=last":
            resolved[i] = f"--ckpt_path={latest_checkpoint(task)}"
        elif arg == "--ckpt_path" and i + 1 < len(resolved) and resolved[i + 1] == "last":
            resolved[i + 1] = str(latest_checkpoint(task))
    return resolved


class ReseedEveryEpoch(Callback):
    """Every training epoch draws its randomness from `(run seed, epoch)` alone, so a run resumed from a
    checkpoint replays exactly what the uninterrupted run would have done. Every run with
    `--trainer.deterministic` gets it (`SuiteCLI` adds it), so a killed deterministic run resumes
    exactly with no extra flag; other runs keep their random stream (it changes which random numbers a
    run draws, so recipes tuned without it would shift) and may opt in with
    `--trainer.callbacks+=tasks.common.lightning_cli.ReseedEveryEpoch`, before the run starts.

    Without it the shuffle order and augmentation of epoch k depend on every random number drawn
    before, which a resumed process never drew. At each epoch start this seeds Python, NumPy and
    torch (the sampler draws its permutation from torch) and the training set's albumentations
    pipeline, and re-creates the epoch's batch iterator where Lightning made it before this hook
    (the first epoch of a resumed run). The run seed is kept in the checkpoint. Exact for `num_workers=0`
    and for non-persistent workers (persistent workers keep their own generators between epochs).
    """

    def __init__(self) -> None:
        self.base_seed: int | None = None

    def state_dict(self) -> dict:
        return {"base_seed": self.base_seed}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_seed = state_dict.get("base_seed")

    def on_fit_start(self, trainer, pl_module) -> None:
        import torch

        if self.base_seed is None:  # a fresh run (a resumed one has it from the checkpoint)
            self.base_seed = int(torch.initial_seed() % 2**31)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        import random

        import numpy as np
        import torch

        seed = (self.base_seed + 1_000_003 * (trainer.current_epoch + 1)) % 2**32
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        loaders = trainer.train_dataloader
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            dataset = getattr(loader, "dataset", None)
            while dataset is not None:  # wrappers (KeyedImages, Subset) keep the real set in .dataset
                transform = getattr(dataset, "transform", None)
                if hasattr(transform, "set_random_seed"):
                    transform.set_random_seed(seed)
                dataset = getattr(dataset, "dataset", None)
        fit_loop = trainer.fit_loop
        restarted = fit_loop.is_resuming or fit_loop.epoch_loop.restarting
        fetcher = getattr(fit_loop, "_data_fetcher", None)
        if trainer.current_epoch > 0 and restarted and fetcher is not None:
            # a resumed run's first epoch: Lightning made its iterator before this hook, from the
            # unseeded state; make it again (epoch 0 of a fresh run needs no replay, so keeps its own)
            iter(fetcher)


def _skip_counters(loaders) -> list:
    """The `SkipCounter`s of the datasets behind `loaders` (wrappers keep theirs in `.dataset`)."""
    counters = []
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        dataset = getattr(loader, "dataset", None)
        while dataset is not None:
            if hasattr(getattr(dataset, "skipped", None), "total"):
                counters.append(dataset.skipped)
            dataset = getattr(dataset, "dataset", None)
    return counters


class LogSkippedImages(Callback):
    """Puts the number of corrupt images skipped so far (`data/skipped_train`, `data/skipped_val`, all
    loader workers together) into the run's metrics after every epoch, and into the log when non-zero."""

    def _log(self, trainer, split: str, loaders) -> None:
        counters = _skip_counters(loaders)
        if not counters or trainer.sanity_checking:
            return
        total = sum(counter.total for counter in counters)
        for logger in trainer.loggers:
            # at the step Lightning logs epoch-end metrics at (the epoch's last), which a resume keeps
            logger.log_metrics({f"data/skipped_{split}": float(total)}, step=max(trainer.global_step - 1, 0))
        if total:
            logging.getLogger(__name__).warning("%d corrupt %s images skipped so far", total, split)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, "train", trainer.train_dataloader)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._log(trainer, "val", trainer.val_dataloaders)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing `metrics.csv`; a resumed run keeps its history and
    appends, dropping rows the killed run logged after the checkpoint it resumes from (`resume_step`),
    so replayed steps are not recorded twice."""

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self.resume_step = resume_step  # before the base class reads the old file
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows, keys = list(reader), list(reader.fieldnames or [])
        if self.resume_step is not None:
            rows = [row for row in rows if not row.get("step") or int(float(row["step"])) < self.resume_step]
        self.metrics_keys = sorted(keys)
        with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)


class RunCSVLogger(CSVLogger):
    """`CSVLogger` whose `metrics.csv` survives a resume into the same run directory."""

    resume_step: int | None = None

    def resume_at(self, step: int) -> None:
        """This fit continues the run from a checkpoint at `step`: drop the rows logged at or after it."""
        self.resume_step = step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir, resume_step=self.resume_step)
        return self._experiment


class RunTensorBoardLogger(TensorBoardLogger):
    """`TensorBoardLogger` whose curves survive a resume into the same run directory. A process killed
    mid-epoch leaves points for steps past its last checkpoint in the event files, which the resumed
    run logs again; the resumed writer is opened with `purge_step` at the checkpoint's step, so
    TensorBoard hides the killed process's points from there on and every step shows once. The
    hyperparameters (and their `hp_metric` point at step 0) were logged when the run began and stay."""

    resume_step: int | None = None

    def resume_at(self, step: int) -> None:
        """This fit continues the run from a checkpoint at `step`: hide the points logged at or after it."""
        self.resume_step = step
        self._kwargs["purge_step"] = step  # handed to the SummaryWriter made on the first write

    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        if self.resume_step is None:
            super().log_hyperparams(params, metrics, step)


class SuiteCLI(LightningCLI):
    """LightningCLI plus the task's data->model links, so YAMLs never repeat what the data knows."""

    spec: TaskSpec
    version: str
    runtime: tuple[str, str | None] = ("torch", None)  # `--runtime`, `--model FILE.onnx` (common.deploy)
    resume_step: int | None = None  # the checkpoint's global step when this fit continues its own run

    def before_fit(self) -> None:
        if self.runtime[0] != "torch":
            raise SystemExit("--runtime applies to validate, test and predict; fit trains the PyTorch model")
        if self.resume_step is not None:
            for logger in self.trainer.loggers:
                if isinstance(logger, (RunCSVLogger, RunTensorBoardLogger)):
                    logger.resume_at(self.resume_step)

    def before_validate(self) -> None:
        from tasks.common.deploy import attach_cli_runtime

        attach_cli_runtime(self)

    before_test = before_predict = before_validate

    def add_arguments_to_parser(self, parser) -> None:
        # As parser defaults (not `trainer_defaults`) so that class_path dicts are instantiated
        # and a YAML may replace or extend (`trainer.callbacks+=`) them.
        defaults = trainer_defaults(self.spec, self.version)
        parser.set_defaults({f"trainer.{key}": value for key, value in defaults.items()})
        for source, target in self.spec.links:
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """`--trainer.enable_progress_bar false` (CI, logs to file) also drops the rich bar; a
        deterministic run also reseeds every epoch (`ReseedEveryEpoch`), once even if listed."""
        trainer = self.config[self.subcommand].trainer if self.subcommand else self.config.trainer
        if trainer.enable_progress_bar is False and trainer.callbacks:
            trainer.callbacks = [c for c in trainer.callbacks if not c.class_path.endswith("ProgressBar")]
        if trainer.deterministic:  # True or "warn": either asks for a run that replays exactly
            callbacks = trainer.callbacks or []
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            if all(c.class_path != RESEED_CALLBACK for c in callbacks):
                trainer.callbacks = [*callbacks, Namespace(class_path=RESEED_CALLBACK, init_args=Namespace())]
        self._log_into_this_run(trainer.logger)

    def _log_into_this_run(self, loggers) -> None:
        """A run's saved config.yaml names that run's directory; a command re-using it (`test --config
        runs/<task>/<run>/config.yaml`) must log into its own, not overwrite the earlier run's files."""
        this_task = (str(RUNS_ROOT), self.spec.name)
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init = getattr(logger, "init_args", None)
            if init is not None and (init.get("save_dir"), init.get("name")) == this_task:
                init.version = self.version


def run_task_cli(spec: TaskSpec, args: list[str]) -> LightningCLI:
    """`mobilenets <task> {fit,validate,test,predict} [--config FILE] [overrides]`."""
    default_files = [str(spec.default_config_path)] if spec.default_config_path.exists() else []
    subcommand_kwargs = {"default_config_files": default_files}
    # `mobilenets` hands LightningCLI the argv after the task name: the expected case, not a mistake.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # TensorBoard and CSV logs share the run directory on purpose.
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    from tasks.common.deploy.runtime import split_runtime_args  # `--runtime R [--model FILE.onnx]`

    args, runtime = split_runtime_args(resolve_last_checkpoint(args, spec.name))
    ckpt = checkpoint_arg(args)
    resume = resume_step = None
    runs_nothing = any(arg in ("-h", "--help") or arg.startswith("--print_config") for arg in args)
    if ckpt is not None and not runs_nothing:
        state = check_checkpoint(ckpt)
        if args and args[0] == "fit":  # a resumed fit continues its own run: same directory, best kept
            resume = run_of_checkpoint(ckpt, spec.name)
            if resume is not None:
                resume_step = state["global_step"]
    version = run_version(spec.name, args, resume=resume)
    attributes = {"spec": spec, "version": version, "runtime": runtime, "resume_step": resume_step}
    cli_class = type("TaskCLI", (SuiteCLI,), attributes)
    return cli_class(
        load_object(spec.module),
        load_object(spec.datamodule),
        subclass_mode_model=spec.subclass_mode,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={sub: subcommand_kwargs for sub in ("fit", "validate", "test", "predict")},
        args=args,
        auto_configure_optimizers=False,
    )


def run_tool(spec: str, args: list[str]) -> int | None:
    tool: Callable[[list[str]], int | None] = load_object(spec)
    return tool(args)
