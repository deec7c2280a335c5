"""`mobilenets profile`: the backbone's cost tables, or a whole detector's (or PlaNet's) with `--model`.

The backbone profiler lives in `backbone/` (which knows nothing of tasks); detectors are tasks,
so `--model` is routed here to the detection (or geolocation) task's profiler.
"""

from __future__ import annotations

from backbone.paper_tables import main_profile
from tasks.detection.profile import main as main_detector_profile


def main(argv: list[str]) -> int:
    if "planet" in argv or "--model=planet" in argv:  # PlaNet's cost lives with its task
        from tasks.geolocation.profile import main as main_planet_profile

        return main_planet_profile(argv)
    if any(arg == "--model" or arg.startswith("--model=") for arg in argv):
        return main_detector_profile(argv)
    return main_profile(argv)
