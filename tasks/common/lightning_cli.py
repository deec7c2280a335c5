"""One LightningCLI set-up for every task: run directories, loggers, checkpoints, default config.

A run lands in `runs/<task>/<timestamp>/` with the saved `config.yaml`, TensorBoard events, a
`metrics.csv`, `checkpoints/{best,last}.ckpt` and whatever plots the task writes. The same command
scales out with `--trainer.strategy ddp --trainer.num_nodes N`: every rank shares the timestamp
through the environment, so all ranks agree on the run directory.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path

from pytorch_lightning.cli import LightningCLI

RUNS_ROOT = Path("runs")
RUN_VERSION_ENV = "MOBILENETS_RUN_VERSION"
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

    @property
    def default_config_path(self) -> Path:
        return CONFIG_ROOT / self.name.replace("-", "_") / self.default_config


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


def run_version(task: str, args: list[str]) -> str:
    """This run's directory name: chosen by the launching process, inherited by DDP workers.

    `--help` and `--print_config` run nothing, so they get a name without claiming a directory.
    """
    if "LOCAL_RANK" in os.environ and RUN_VERSION_ENV in os.environ:
        return os.environ[RUN_VERSION_ENV]
    if any(arg in ("-h", "--help") or arg.startswith("--print_config") for arg in args):
        return time.strftime("%Y%m%d-%H%M%S")
    os.environ[RUN_VERSION_ENV] = new_run_version(task)
    return os.environ[RUN_VERSION_ENV]


def trainer_defaults(spec: TaskSpec, version: str) -> dict:
    logger_args = {"save_dir": str(RUNS_ROOT), "name": spec.name, "version": version}
    best_name = "best-{epoch}-{step}"
    return {
        "logger": [
            {"class_path": "pytorch_lightning.loggers.TensorBoardLogger", "init_args": logger_args},
            {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": logger_args},
        ],
        "callbacks": [
            {"class_path": "pytorch_lightning.callbacks.RichProgressBar"},
            {"class_path": "pytorch_lightning.callbacks.LearningRateMonitor"},
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


def resolve_last_checkpoint(args: list[str], task: str) -> list[str]:
    """Rewrite `--ckpt_path last` to the newest checkpoint of this task's runs."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if arg == "--ckpt_path=last":
            resolved[i] = f"--ckpt_path={latest_checkpoint(task)}"
        elif arg == "--ckpt_path" and i + 1 < len(resolved) and resolved[i + 1] == "last":
            resolved[i + 1] = str(latest_checkpoint(task))
    return resolved


class SuiteCLI(LightningCLI):
    """LightningCLI plus the task's data->model links, so YAMLs never repeat what the data knows."""

    spec: TaskSpec
    version: str

    def add_arguments_to_parser(self, parser) -> None:
        # As parser defaults (not `trainer_defaults`) so that class_path dicts are instantiated
        # and a YAML may replace or extend (`trainer.callbacks+=`) them.
        defaults = trainer_defaults(self.spec, self.version)
        parser.set_defaults({f"trainer.{key}": value for key, value in defaults.items()})
        for source, target in self.spec.links:
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """`--trainer.enable_progress_bar false` (CI, logs to file) also drops the rich bar."""
        trainer = self.config[self.subcommand].trainer if self.subcommand else self.config.trainer
        if trainer.enable_progress_bar is False and trainer.callbacks:
            trainer.callbacks = [c for c in trainer.callbacks if not c.class_path.endswith("ProgressBar")]
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
    args = resolve_last_checkpoint(args, spec.name)
    version = run_version(spec.name, args)
    cli_class = type("TaskCLI", (SuiteCLI,), {"spec": spec, "version": version})
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
