"""`mobilenets profile`: the backbone's cost tables, or a whole detector's with `--model`.

The backbone profiler lives in `backbone/` (which knows nothing of tasks); detectors are tasks,
so `--model` is routed here to the detection task's profiler.
"""

from __future__ import annotations

from backbone.paper_tables import main_profile
from tasks.detection.profile import main as main_detector_profile


def main(argv: list[str]) -> int:
    if any(arg == "--model" or arg.startswith("--model=") for arg in argv):
        return main_detector_profile(argv)
    return main_profile(argv)
