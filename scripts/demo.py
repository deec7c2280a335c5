"""`make demo`: the suite's main jobs end to end on built-in synthetic data, in under ten minutes on 2 cores.

1. detection: generate the synthetic COCO-format set, train SSD300-MobileNet for a few minutes,
   evaluate (COCO table, PR curves), draw a few predictions;
2. face embeddings: train briefly on synthetic identities, index unseen ones with FAISS, search.
Each step is the same `mobilenets` command a user would type.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MOBILENETS = str(Path(sys.executable).parent / "mobilenets")
# 12 epochs (the SSD recipe runs 24) take about 2.3 minutes on 2 cores; an epoch count (not a time
# limit) lets the cosine schedule finish, and the recipe's max_time still caps a slow machine.
DETECTION_EPOCHS = os.environ.get("DEMO_DETECTION_EPOCHS", "12")
FACE_MINUTES = os.environ.get("DEMO_FACE_MINUTES", "5")  # the full face recipe: about 4 minutes


def run(*args: str) -> None:
    print(f"\n$ mobilenets {' '.join(args)}", flush=True)
    subprocess.run([MOBILENETS, *args], cwd=REPO, check=True)


def newest_run(task: str) -> Path:
    return max((REPO / "runs" / task).iterdir(), key=lambda p: p.stat().st_mtime)


def main() -> None:
    started = time.monotonic()
    config = "configs/detection/ssd300_synthetic.yaml"
    run("detection", "fit", "--config", config, f"--trainer.max_epochs={DETECTION_EPOCHS}")
    trained = newest_run("detection")
    best = min((trained / "checkpoints").glob("best-*.ckpt"))
    run("detection", "test", "--config", config, "--ckpt_path", str(best))
    tested = newest_run("detection")
    run(
        "detection",
        "predict",
        "--config",
        config,
        "--ckpt_path",
        str(best),
        "--model.draw_predictions=8",
        "--trainer.limit_predict_batches=1",
    )
    predicted = newest_run("detection")
    run("face-embedding", "demo", "--minutes", FACE_MINUTES)
    print(f"\ndemo finished in {(time.monotonic() - started) / 60:.1f} min")
    print(f"  detection training run:  {trained}")
    print(f"  COCO table, PR curves:   {tested}")
    print(f"  drawn predictions:       {predicted}")
    print(f"  face search results:     {newest_run('face-embedding-demo')}")
    print(f"  face search page:        {MOBILENETS} face-embedding serve --index "
          f"{newest_run('face-embedding-demo') / 'index'}   then open http://127.0.0.1:8000/")


if __name__ == "__main__":
    main()
