"""`mobilenets export`: a task run's whole model (`--checkpoint`, recognised among every task's
`TaskSpec.deploy`), or the bare backbone."""

from __future__ import annotations

from collections.abc import Sequence

from tasks.common.deploy import TaskDeployment, main_export


def deployments() -> list[TaskDeployment]:
    """Every exportable task's deployment, in `tasks.cli.TASKS` order."""
    from tasks.cli import TASKS

    return [spec.deployment() for spec in TASKS.values() if spec.deploy]


def main(argv: Sequence[str] | None = None) -> int:
    return main_export(argv, deployments())
