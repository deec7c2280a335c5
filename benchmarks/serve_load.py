"""Load on `mobilenets face-embedding serve`: 500 searches from 20 concurrent clients, enrolments between.

    python benchmarks/serve_load.py                         # random recipe-shaped embedder (~1 min)
    python benchmarks/serve_load.py --weights RUN/checkpoints/last.ckpt    # a trained one: top-1 too

The server is the real command (`mobilenets face-embedding serve`, uvicorn, one process) started as a
subprocess on 127.0.0.1 with a free port, so client threads do not share its interpreter. The gallery
is --identities synthetic people with one photo each (the demo's layout: `face_embedding/synthetic.yaml`
sizes, 80 px, 128-D); each search uploads another photo of one of them (a JPEG, as a browser would),
k=5. Every --enrol-every-th request a client enrols a new synthetic person instead (one photo, saved
at once), so searches run while the index is being rewritten. Each client is an `httpx.Client`
(keep-alive); latency is from sending the request to reading the whole JSON answer. A request fails
if it raises, times out (--timeout) or answers anything but 200. The run is bounded: at most
--requests searches, and the script gives up after --max-seconds.

Each search's top match is also compared with the same search sent alone before the load (a newcomer
enrolled since may legitimately be nearer); the script exits 1 on any failure or disagreement.

Results on this machine (2 shared cores, under the CPU lock, 100 people; 500 searches + 20 enrolments):

    weights                     kind    requests failed  per s  p50 ms  p95 ms  max ms  same as at rest
    untrained (recipe shape)    search       500      0   61.8     293     364     664       500 / 500
                                enrol         20      0    2.5     304     370     403
    trained (synthetic recipe)  search       500      0   64.8     279     347     394       500 / 500
                                enrol         20      0    2.6     285     344     370
    (top-1 right under load: 73.8 % trained, 0 % untrained; 8.1 s and 7.7 s wall)

Forward passes run one at a time (`FaceGallery.embed`), so with 20 clients a search mostly waits in the
queue: about 15 ms of work each, 20 deep. Untrained weights give chance top-1; pass a trained
checkpoint with --weights to see that answers under load are the right people.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.face_embedding.commands import build_index
from tasks.face_embedding.data import TEST_IDENTITY_OFFSET
from tasks.face_embedding.model import build_embedder
from tasks.face_embedding.synthetic import SyntheticFaces, write_identity_folders

MOBILENETS = Path(sys.executable).parent / "mobilenets"
RECIPE = {"backbone": {"width_mult": 0.25}, "embedding_dim": 128}  # configs/face_embedding/synthetic.yaml
IMAGE_SIZE = 80


def jpeg(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=90)
    return out.getvalue()


def random_checkpoint(path: Path) -> Path:
    """A checkpoint in `fit`'s layout for an untrained embedder of the recipe's shape: the same speed."""
    torch.manual_seed(0)
    model = build_embedder(**RECIPE).train()
    faces = SyntheticFaces(16, 2, size=IMAGE_SIZE, identity_offset=900)
    for module in model.modules():  # BN statistics of one batch of faces (as the tests do): with the
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):  # initial ones every face embeds
            module.momentum = None  # to the same vector, and ties make search order arbitrary
    with torch.no_grad():
        model(torch.stack([faces[i][0] for i in range(len(faces))]))
    torch.save({"state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": RECIPE, "datamodule_hyper_parameters": {"image_size": IMAGE_SIZE}}, path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index: Path, port: int, log: Path) -> subprocess.Popen:
    command = [str(MOBILENETS), "face-embedding", "serve", "--index", str(index), "--port", str(port)]
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"the server did not answer on port {port} within 120 s:\n{log.read_text()}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="face-embedding checkpoint (default: random, the recipe's shape)")
    parser.add_argument("--identities", type=int, default=100, help="people in the gallery")
    parser.add_argument("--requests", type=int, default=500, help="searches to send")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (threads)")
    parser.add_argument("--enrol-every", type=int, default=25, help="one enrolment per this many searches")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="give up after this long")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve_load."))
    weights = Path(args.weights) if args.weights else random_checkpoint(work / "random.ckpt")
    faces = SyntheticFaces(args.identities, 2, size=IMAGE_SIZE, identity_offset=TEST_IDENTITY_OFFSET)
    gallery = work / "gallery"
    write_identity_folders(SyntheticFaces(args.identities, 1, size=IMAGE_SIZE,
                                          identity_offset=TEST_IDENTITY_OFFSET), gallery)
    build_index(gallery, weights, work / "index")
    probes = [(faces.identities[faces.labels[i]], jpeg(faces.image(i))) for i in range(1, len(faces), 2)]
    newcomers = SyntheticFaces(args.requests // args.enrol_every + 1, 1, size=IMAGE_SIZE,
                               identity_offset=5_000)

    port = free_port()
    server = start_server(work / "index", port, work / "server.log")
    url = f"http://127.0.0.1:{port}"
    at_rest: list[int] = []  # each probe's top record, searched one at a time before the load
    tickets = itertools.count()
    lock = threading.Lock()
    results: list[tuple[str, float, bool, bool, bool]] = []  # kind, seconds, ok, top-1 right, as at rest
    errors: list[str] = []
    deadline = time.monotonic() + args.max_seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=args.timeout) as http:
            while time.monotonic() < deadline:
                ticket = next(tickets)
                if ticket >= args.requests + args.requests // args.enrol_every:
                    return
                enrolling = ticket % (args.enrol_every + 1) == args.enrol_every
                started = time.perf_counter()
                try:
                    if enrolling:
                        n = ticket // (args.enrol_every + 1)
                        data = jpeg(newcomers.image(n))
                        response = http.post("/api/enrol", data={"name": f"newcomer {n}"},
                                             files=[("images", (f"n{n}.jpg", data, "image/jpeg"))])
                    else:
                        truth, data = probes[ticket % len(probes)]
                        response = http.post("/api/search", data={"k": "5"},
                                             files={"image": ("q.jpg", data, "image/jpeg")})
                    ok = response.status_code == 200
                    top = response.json()["matches"][0] if ok and not enrolling else None
                    right = top is not None and top["identity"] == truth
                    agrees = top is not None and (top["identity"].startswith("newcomer")  # nearer now
                                                  or at_rest[ticket % len(probes)] == top["record"])
                    if not ok:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as err:
                    ok = right = agrees = False
                    errors.append(f"{type(err).__name__}: {err}")
                with lock:
                    kind = "enrol" if enrolling else "search"
                    results.append((kind, time.perf_counter() - started, ok, right, agrees))

    try:
        with httpx.Client(base_url=url, timeout=args.timeout) as http:
            for _, data in probes:
                found = http.post("/api/search", data={"k": "5"}, files={"image": ("q.jpg", data)})
                at_rest.append(found.json()["matches"][0]["record"])
        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        health = httpx.get(f"{url}/api/health", timeout=10).json()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    print(f"server: mobilenets face-embedding serve on 127.0.0.1, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, weights {'random' if not args.weights else weights}")
    print(f"gallery: {args.identities} people, then {health['index_size']} faces after the run\n")
    print(f"{'kind':<8} {'requests':>8} {'failed':>6} {'per s':>7} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}")
    for kind in ("search", "enrol"):
        rows = [r for r in results if r[0] == kind]
        times = [1000 * r[1] for r in rows]
        print(f"{kind:<8} {len(rows):>8} {sum(not r[2] for r in rows):>6} {len(rows) / wall:>7.1f} "
              f"{percentile(times, 50):>7.0f} {percentile(times, 95):>7.0f} {max(times, default=0):>7.0f}")
    searches = [r for r in results if r[0] == "search"]
    print(f"\n{len(results)} requests from {args.clients} clients in {wall:.1f} s; "
          f"top-1 right on {np.mean([r[3] for r in searches]):.1%} of searches, the same top-1 as at rest "
          f"(or a newcomer) on {sum(r[4] for r in searches)} of {len(searches)}")
    for error in errors[:5]:
        print(f"  failed: {error}")
    complete = len(searches) == args.requests
    if not complete:
        print(f"stopped after {args.max_seconds:.0f} s with {len(searches)} of {args.requests} searches")
    return 0 if complete and not errors and all(r[4] for r in searches) else 1


if __name__ == "__main__":
    sys.exit(main())
