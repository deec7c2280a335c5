"""The `mobilenets` command: one entry point for every task and tool.

    mobilenets <task> {fit,validate,test,predict} [--config FILE] [overrides]   (LightningCLI)
    mobilenets <task> <tool> [args]                                          (e.g. detection evaluate)
    mobilenets {profile,export,data} [args]

Tasks are imported only when named, so `mobilenets profile` does not pay for FAISS or pycocotools.
"""

from __future__ import annotations

import sys

from tasks.common.lightning_cli import TaskSpec, run_task_cli, run_tool

TASKS = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="finegrained",
            deploy="tasks.finegrained.deploy:DEPLOYMENT",
            module="tasks.finegrained.module:FineGrainedModule",
            datamodule="tasks.finegrained.data:FineGrainedDataModule",
            monitor="val/top1",
            links=(("num_classes", "num_classes"), ("class_names", "class_names")),
        ),
        TaskSpec(
            name="detection",
            deploy="tasks.detection.deploy:DEPLOYMENT",
            module="tasks.detection.module:DetectionModule",
            datamodule="tasks.detection.data:CocoDataModule",
            monitor="val/AP",
            default_config="ssd300_synthetic.yaml",
            links=(("num_classes", "num_classes"), ("image_size", "image_size")),
            tools={"evaluate": "tasks.detection.commands:main_evaluate"},
        ),
        TaskSpec(
            name="face-embedding",
            deploy="tasks.face_embedding.deploy:DEPLOYMENT",
            module="tasks.face_embedding.module:FaceEmbeddingModule",
            datamodule="tasks.face_embedding.data:FaceDataModule",
            monitor="val/lfw_accuracy",
            links=(("num_identities", "num_identities"),),
            tools={
                "index": "tasks.face_embedding.commands:main_index",
                "search": "tasks.face_embedding.commands:main_search",
                "demo": "tasks.face_embedding.demo:main_demo",
                "export-embeddings": "tasks.face_embedding.commands:main_export",
                "serve": "tasks.face_embedding.serve:main_serve",
            },
        ),
        TaskSpec(
            name="geolocation",
            deploy="tasks.geolocation.deploy:DEPLOYMENT",
            module="tasks.geolocation.module:GeolocationModule",
            datamodule="tasks.geolocation.data:GeolocationDataModule",
            monitor="val/geoscore",
            links=(("num_cells", "num_cells"), ("cell_tables", "cells")),
            tools={
                "partition": "tasks.geolocation.commands:main_partition",
                "evaluate": "tasks.geolocation.commands:main_evaluate",
                "shards": "tasks.geolocation.commands:main_shards",
                "synth": "tasks.geolocation.commands:main_synth",
                "baselines": "tasks.geolocation.commands:main_baselines",
                "profile": "tasks.geolocation.commands:main_profile",
            },
        ),
        TaskSpec(
            name="face-attributes",
            deploy="tasks.face_attributes.deploy:DEPLOYMENT",
            module="tasks.face_attributes.module:FaceAttributesModule",
            datamodule="tasks.face_attributes.data:FaceAttributesDataModule",
            monitor="val/mean_ap",
            links=(("num_attributes", "num_attributes"), ("attribute_names", "attribute_names")),
            tools={"export-logits": "tasks.face_attributes.commands:main_export_logits"},
        ),
    )
}

TOOLS = {
    "profile": "tasks.profile_cli:main",
    "export": "tasks.export_cli:main",  # a task checkpoint (--checkpoint) or the bare backbone
    "data": "tasks.data_cli:main",
}

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def usage() -> str:
    lines = ["usage: mobilenets <command> ...", "", "tasks (LightningCLI: fit, validate, test, predict):"]
    for spec in TASKS.values():
        tools = f"; also: {', '.join(spec.tools)}" if spec.tools else ""
        config = spec.default_config_path.relative_to(spec.default_config_path.parents[2])
        lines.append(f"  {spec.name:<16} default config {config}{tools}")
    lines += ["", "tools:", *(f"  {name}" for name in TOOLS)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in TOOLS:
        return run_tool(TOOLS[command], rest) or 0
    if command not in TASKS:
        print(f"mobilenets: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    spec = TASKS[command]
    if rest and rest[0] in spec.tools:
        return run_tool(spec.tools[rest[0]], rest[1:]) or 0
    if not rest or rest[0] not in LIGHTNING_SUBCOMMANDS + ("-h", "--help"):
        choices = ", ".join(LIGHTNING_SUBCOMMANDS + tuple(spec.tools))
        print(f"mobilenets {command}: expected one of {choices}", file=sys.stderr)
        return 2
    run_task_cli(spec, rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
