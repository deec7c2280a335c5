"""`mobilenets face-embedding serve` through FastAPI's test client (and, for concurrency, a real uvicorn).

The embedder is untrained (random weights, BN statistics of one batch: `save_checkpoint`), so a photo
is only sure to find itself; every identity check below queries with a photo that is in the gallery.
"""

from __future__ import annotations

import io
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_face_commands import SIZE, save_checkpoint

from tasks.common.io import read_image
from tasks.face_embedding.commands import build_index, main_search
from tasks.face_embedding.data import synthetic_eval_set
from tasks.face_embedding.serve import LOCAL_HOSTS, create_app, main_serve, running_server
from tasks.face_embedding.serve_gallery import FaceGallery, Threshold, resolve_threshold
from tasks.face_embedding.synthetic import SyntheticFaces, write_identity_folders

TOKEN = "s3cret-token"
LIMIT = 60_000  # bytes per upload: a 40 px JPEG is about 2 KB


def jpeg(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=95)
    return out.getvalue()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A checkpoint and an index of 4 people x 2 photos, built once; tests serve copies of the index."""
    root = tmp_path_factory.mktemp("serve")
    save_checkpoint(root / "face.ckpt", seed=0)
    write_identity_folders(SyntheticFaces(4, 2, size=SIZE), root / "gallery")
    build_index(root / "gallery", root / "face.ckpt", root / "index")
    return root


@pytest.fixture
def index_dir(built, tmp_path):
    shutil.copytree(built / "index", tmp_path / "index")
    return tmp_path / "index"


def make_client(index_dir, *, token=TOKEN, **kwargs) -> TestClient:
    gallery = FaceGallery(index_dir)
    app = create_app(gallery, threshold=Threshold(0.5, "test", True), token=token, max_upload_bytes=LIMIT,
                     **kwargs)
    return TestClient(app)


@pytest.fixture
def client(index_dir):
    return make_client(index_dir)


def search(client, data: bytes, name="query.jpg", **form) -> httpx.Response:
    return client.post("/api/search", files={"image": (name, data, "image/jpeg")}, data=form)


def enrol(client, name: str, photos: list[bytes], token=TOKEN) -> httpx.Response:
    files = [("images", (f"photo{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/api/enrol", files=files, data={"name": name}, headers=headers)


def cli_matches(index_dir, query, capsys, k=5) -> list[tuple[str, float, str]]:
    assert main_search(["--index", str(index_dir), "--query", str(query), "-k", str(k)]) == 0
    rows = [line.strip().split("  ") for line in capsys.readouterr().out.splitlines()]  # names have spaces
    return [(identity, float(score), path) for _, score, identity, path in rows]


def api_matches(client, index_dir, data, k=5) -> list[tuple[str, float, str]]:
    response = search(client, data, k=str(k))
    assert response.status_code == 200, response.text
    paths = FaceGallery(index_dir).index.paths
    return [(m["identity"], m["score"], paths[m["record"]]) for m in response.json()["matches"]]


def assert_same_matches(api, cli):
    assert [(name, path) for name, _, path in api] == [(name, path) for name, _, path in cli]
    np.testing.assert_allclose([s for _, s, _ in api], [s for _, s, _ in cli], atol=1e-4)  # CLI prints 4 dp


def test_search_returns_the_same_matches_as_the_search_command(built, index_dir, client, capsys):
    stranger = built / "stranger.png"
    Image.fromarray(SyntheticFaces(1, 1, size=SIZE, identity_offset=60).image(0)).save(stranger)
    for query in (built / "gallery" / "synth_000002" / "synth_000002_0002.jpg", stranger):
        api = api_matches(client, index_dir, query.read_bytes())
        assert len(api) == 5
        assert_same_matches(api, cli_matches(index_dir, query, capsys))
    response = search(client, (built / "gallery" / "synth_000002" / "synth_000002_0002.jpg").read_bytes())
    found = response.json()
    assert found["identity"] == "synth_000002" and found["matches"][0]["score"] == pytest.approx(1, abs=1e-5)
    thumbnail = client.get(found["matches"][0]["thumbnail"])
    assert thumbnail.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumbnail.content)).size == (SIZE, SIZE)


def test_enrol_then_search_finds_the_new_person_and_a_restart_serves_them(index_dir, client, capsys):
    ada = SyntheticFaces(1, 2, size=SIZE, identity_offset=70)
    photos = [jpeg(ada.image(i)) for i in range(2)]
    response = enrol(client, "  Ada <b>Lovelace</b>  ", photos)
    assert response.status_code == 200, response.text
    assert response.json() == {"identity": "Ada <b>Lovelace</b>", "added": 2, "records": [8, 9],
                               "index_size": 10}
    found = search(client, photos[1]).json()
    assert found["identity"] == "Ada <b>Lovelace</b>"
    assert found["matches"][0]["record"] == 9 and found["matches"][0]["score"] == pytest.approx(1, abs=1e-4)
    stored = client.get("/api/thumbnail/9")
    assert stored.status_code == 200
    np.testing.assert_allclose(np.array(Image.open(io.BytesIO(stored.content)).convert("RGB")),
                               np.array(Image.open(io.BytesIO(photos[1])).convert("RGB")), atol=1)
    assert {"name": "Ada <b>Lovelace</b>", "label": 4, "images": 2} in client.get("/api/identities").json()

    restarted = make_client(index_dir)  # a new gallery on the same directory: what a restart loads
    assert restarted.get("/api/health").json()["index_size"] == 10
    assert search(restarted, photos[1]).json()["identity"] == "Ada <b>Lovelace</b>"
    assert restarted.get("/api/thumbnail/9").content == stored.content
    query = index_dir.parent / "ada.jpg"  # the saved index is the CLI's too
    query.write_bytes(photos[0])
    assert_same_matches(api_matches(restarted, index_dir, photos[0]), cli_matches(index_dir, query, capsys))


def test_enrolment_needs_the_token(index_dir, client):
    photo = [jpeg(SyntheticFaces(1, 1, size=SIZE, identity_offset=80).image(0))]
    for token in (None, "wrong"):
        response = enrol(client, "Mallory", photo, token=token)
        assert response.status_code == 401 and "token" in response.json()["detail"]
    assert client.get("/api/health").json()["index_size"] == 8
    assert "Mallory" not in {p["name"] for p in client.get("/api/identities").json()}
    assert enrol(client, "Mallory", photo).status_code == 200
    open_client = make_client(index_dir, token=None)  # without a token anyone local may enrol
    assert enrol(open_client, "Eve", photo, token=None).status_code == 200
    assert open_client.get("/api/health").json()["enrol_requires_token"] is False


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "gray").save(out, format="PNG")
    return out.getvalue()


BAD_UPLOADS = {  # name -> (file name, bytes from a good JPEG, status, message)
    "not an image": ("notes.jpg", lambda good: b"these are my notes, not a photo", 422, "not a JPEG/PNG"),
    "0 bytes": ("empty.jpg", lambda good: b"", 400, "empty file (0 bytes)"),
    "over the limit": ("big.jpg", lambda good: good + b"\0" * LIMIT, 413, f"upload limit of {LIMIT} bytes"),
    "truncated JPEG": ("cut.jpg", _truncated, 422, "truncated or corrupt image data"),
    "../ file name": ("../../etc/passwd.jpg", lambda good: good, 400, "must be a plain file name"),
    "backslash file name": ("..\\evil.jpg", lambda good: good, 400, "must be a plain file name"),
    "too small": ("tiny.png", lambda good: _png(20, 20), 422, "too small for a face crop"),
    "not face-shaped": ("banner.png", lambda good: _png(300, 60), 422, "not face-shaped"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_bad_upload_is_a_clear_4xx_and_the_server_keeps_serving(built, client, case):
    good_path = built / "gallery" / "synth_000001" / "synth_000001_0001.jpg"
    good = good_path.read_bytes()
    file_name, make, status, message = BAD_UPLOADS[case]
    bad = make(good)
    refused = search(client, bad, name=file_name)
    assert refused.status_code == status and message in refused.json()["detail"], refused.text
    refused = client.post("/api/enrol", data={"name": "Bad"}, headers={"Authorization": f"Bearer {TOKEN}"},
                          files=[("images", ("ok.jpg", good, "image/jpeg")),
                                 ("images", (file_name, bad, "image/jpeg"))])
    assert refused.status_code == status and message in refused.json()["detail"], refused.text
    assert client.get("/api/health").json()["index_size"] == 8  # the good photo was not added either
    assert search(client, good).json()["identity"] == "synth_000001"


def test_oversized_request_and_bad_forms_are_refused(built, client):
    good = (built / "gallery" / "synth_000001" / "synth_000001_0001.jpg").read_bytes()
    huge = client.post("/api/search", content=b"x" * (LIMIT * 21 + 2**16), headers={
        "Content-Type": "multipart/form-data; boundary=b"})
    assert huge.status_code == 413 and "over the limit" in huge.json()["detail"]
    assert search(client, good, k="0").status_code == 422
    assert client.post("/api/search", data={"k": "3"}).status_code == 422  # no image at all
    blank = enrol(client, "   ", [good])
    assert blank.status_code == 422 and "1 to 80 characters" in blank.json()["detail"]
    control = enrol(client, "Bob\x07", [good])
    assert control.status_code == 422 and "control characters" in control.json()["detail"]
    assert client.get("/api/thumbnail/8").status_code == 404
    assert client.get("/api/thumbnail/-1").status_code == 422
    for path in ("/static/../serve.py", "/static/index.html", "/api/thumbnail/..%2F..%2Fface.ckpt"):
        assert client.get(path).status_code in (404, 422), path
    assert search(client, good).status_code == 200


def test_cross_origin_posts_and_foreign_host_names_are_refused(built, index_dir):
    good = (built / "gallery" / "synth_000001" / "synth_000001_0001.jpg").read_bytes()
    local = make_client(index_dir, allowed_hosts=list(LOCAL_HOSTS))
    local.base_url = "http://127.0.0.1:8000"
    assert local.get("/api/health").status_code == 200
    assert search(local, good).status_code == 200
    hostile = local.post("/api/search", files={"image": ("q.jpg", good, "image/jpeg")},
                         headers={"Origin": "http://evil.example"})
    assert hostile.status_code == 403 and "cross-origin" in hostile.json()["detail"]
    local.base_url = "http://evil.example"  # DNS rebinding: a foreign name that resolves to us
    assert local.get("/api/health").status_code == 400


def test_page_and_schema(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self' covers it
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/static/app.js"' in page.text
    script = client.get("/static/app.js").text
    assert "textContent" in script
    assert not re.search(r"\.(inner|outer)HTML|insertAdjacentHTML|\.write\(", script)
    schema = client.get("/openapi.json").json()
    operations = {(path, method) for path, item in schema["paths"].items() for method in item}
    assert {("/api/search", "post"), ("/api/enrol", "post"), ("/api/identities", "get"),
            ("/api/health", "get")} <= operations
    bodies = schema["components"]["schemas"]
    search_form = next(s for name, s in bodies.items() if name.startswith("Body_search"))
    enrol_form = next(s for name, s in bodies.items() if name.startswith("Body_enrol"))
    assert {"image", "k"} <= set(search_form["properties"])
    assert {"name", "images"} <= set(enrol_form["properties"])


def test_threshold_labels_strangers_unknown_and_defaults_to_the_test_run(built, index_dir, client):
    stranger = jpeg(SyntheticFaces(1, 1, size=SIZE, identity_offset=90).image(0))
    assert search(client, stranger, threshold="0.999").json()["identity"] == "unknown"
    found = search(client, stranger, threshold="-1").json()
    assert found["identity"] == found["matches"][0]["identity"] and found["threshold"] == -1
    assert all(m["same_person"] for m in found["matches"])

    weights = FaceGallery(index_dir).weights
    assert resolve_threshold(None, None, index_dir, weights).calibrated is False
    eval_set = synthetic_eval_set(20, 4, size=32, seed=0, identity_offset=100_000, pairs_per_fold=6)
    eval_set.write_report(np.eye(20, dtype=np.float32)[eval_set.labels], index_dir.parent, prefix="demo")
    found = resolve_threshold(None, None, index_dir, weights)  # the demo's layout: metrics beside the index
    assert found.calibrated and found.source.endswith("demo_metrics.json")
    assert 0 <= found.value < 1  # one-hot embeddings: same pairs score 1, different pairs 0
    assert resolve_threshold(0.3, None, index_dir, weights).value == 0.3
    health = make_client(index_dir).get("/api/health").json()
    assert health["threshold"] == 0.5 and health["threshold_source"] == "test"


def test_serve_command_reports_a_missing_index(tmp_path, capsys):
    assert main_serve(["--index", str(tmp_path / "nowhere")]) == 2
    assert "embedder.json" in capsys.readouterr().err


def test_concurrent_searches_during_enrolment_never_fail(built, index_dir):
    gallery = FaceGallery(index_dir)
    app = create_app(gallery, threshold=Threshold(0.5, "test", True), max_upload_bytes=LIMIT)
    queries = [(path.parent.name, path.read_bytes()) for path in sorted((built / "gallery").rglob("*.jpg"))]
    newcomers = SyntheticFaces(6, 1, size=SIZE, identity_offset=200)
    failures, stop = [], threading.Event()

    def searcher(worker: int) -> int:
        done = 0
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set() or done < 10:
                name, data = queries[(worker + done) % len(queries)]
                response = http.post("/api/search", files={"image": ("q.jpg", data)}, data={"k": "3"})
                if response.status_code != 200 or response.json()["identity"] != name:
                    failures.append((response.status_code, response.text))
                done += 1
        return done

    with running_server(app) as url, ThreadPoolExecutor(8) as pool:
        running = [pool.submit(searcher, worker) for worker in range(8)]
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(len(newcomers)):
                response = http.post("/api/enrol", data={"name": f"newcomer {i}"},
                                     files=[("images", ("p.jpg", jpeg(newcomers.image(i))))])
                assert response.status_code == 200, response.text
        stop.set()
        searches = sum(future.result() for future in running)
    assert failures == [] and searches >= 80
    assert len(gallery) == 14 and len(FaceGallery(index_dir)) == 14  # all six were saved
    assert read_image(gallery.index.paths[-1]).shape == (SIZE, SIZE, 3)


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_serving_on_onnx_runtime_finds_the_same_people(built, index_dir, runtime):
    """`serve --runtime onnx|onnx-int8` exports the checkpoint beside the index and embeds with it:
    fp32 gives PyTorch's scores; int8 keeps the ranking of this small gallery's top match."""
    pytest.importorskip("onnxruntime")
    query = (built / "gallery" / "synth_000002" / "synth_000002_0002.jpg").read_bytes()
    torch_hits = search(make_client(index_dir), query).json()["matches"]
    gallery = FaceGallery(index_dir, runtime=runtime)
    assert gallery.describe()["model"].endswith(f"({runtime})")
    client = TestClient(create_app(gallery, threshold=Threshold(0.5, "test", True), token=TOKEN,
                                   max_upload_bytes=LIMIT))
    onnx_hits = search(client, query).json()["matches"]
    assert onnx_hits[0]["record"] == torch_hits[0]["record"]
    if runtime == "onnx":
        assert [h["record"] for h in onnx_hits] == [h["record"] for h in torch_hits]
        scores = [h["score"] for h in onnx_hits], [h["score"] for h in torch_hits]
        np.testing.assert_allclose(*scores, atol=1e-4)
        exported = index_dir.with_name("index-onnx") / "model.onnx"
        with pytest.raises(ValueError, match="fp32 model, but --runtime is onnx-int8"):
            FaceGallery(index_dir, runtime="onnx-int8", model_file=exported)
