"""`mobilenets face-embedding serve`: the face gallery as a web page and a JSON API.

    serve --index INDEX [--weights CKPT] [--host 127.0.0.1] [--port 8000] [--token T] [--threshold X]

FastAPI parses the uploads and publishes the API's schema at /openapi.json; uvicorn serves it. The
page (`web/`) is static and talks to the API only, so everything it shows can be scripted too:

    POST /api/search    image, k[, threshold]   top-k gallery matches and "who is it" (or "unknown")
    POST /api/enrol     name, images            adds a person's photos to the index, saved at once
    GET  /api/identities                        everyone in the index, with their photo counts
    GET  /api/health                            index size, model, default threshold
    GET  /api/thumbnail/{record}                a gallery photo, by record number

Security: the server binds to localhost unless told otherwise, and then answers only requests whose
Host is a local name (a DNS-rebinding page cannot reach it); a POST from another origin (a page
elsewhere posting a form here) is refused; a request body over the limit is refused before it is
parsed, and each upload is checked by `upload.decode_upload`. The page, its script and stylesheet
are three fixed files read at start-up and thumbnails come from the index's own records
(`serve_gallery`), so no path from a request reaches the file system. The page sets text only
through `textContent`, under a Content-Security-Policy that runs only its own script. With `--token`
(or $MOBILENETS_SERVE_TOKEN) enrolment needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn
from fastapi import Depends, FastAPI, File, Form, Request, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from tasks.face_embedding.index import IndexFormatError
from tasks.face_embedding.serve_gallery import FaceGallery, Threshold, resolve_threshold
from tasks.face_embedding.upload import MAX_NAME_LENGTH, Photo, RequestError, clean_name, decode_upload

TOKEN_ENV = "MOBILENETS_SERVE_TOKEN"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
MAX_ENROL_IMAGES = 20
MAX_K = 50
WEB_DIR = Path(__file__).with_name("web")
WEB_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
             "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
             "/static/style.css": ("style.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    # The page runs only its own script: a name that smuggles in markup could not execute.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class MatchOut(BaseModel):
    rank: int
    score: float = Field(description="cosine similarity to the query, -1 to 1")
    identity: str
    record: int = Field(description="the gallery photo's record number in the index")
    thumbnail: str | None = Field(description="URL of the gallery photo, if the index keeps paths")
    same_person: bool = Field(description="score above the threshold")


class SearchOut(BaseModel):
    identity: str = Field(description="the top match's name if it clears the threshold, else 'unknown'")
    threshold: float
    matches: list[MatchOut]


class EnrolOut(BaseModel):
    identity: str
    added: int
    records: list[int]
    index_size: int


class IdentityOut(BaseModel):
    name: str
    label: int
    images: int


class HealthOut(BaseModel):
    status: str
    index_size: int
    identities: int
    index_kind: str
    model: str
    embedding_dim: int
    image_size: int
    threshold: float
    threshold_source: str
    threshold_calibrated: bool
    enrol_requires_token: bool
    max_upload_bytes: int
    max_k: int


def create_app(gallery: FaceGallery, *, threshold: Threshold, token: str | None = None,
               max_upload_bytes: int = 8 * 2**20, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The API and the page over `gallery`; `allowed_hosts` (Host header names) None allows any.
    Swagger UI is off: it would load its scripts from a CDN."""
    app = FastAPI(title="MobileNets face search", docs_url=None, redoc_url=None,
                  description="Search a face gallery by photo and enrol new people.")
    bearer = HTTPBearer(auto_error=False, description="needed for enrolment when the server has a token")
    max_request = max_upload_bytes * MAX_ENROL_IMAGES + 2**16  # multipart framing and form fields
    pages = {route: ((WEB_DIR / name).read_bytes(), kind) for route, (name, kind) in WEB_FILES.items()}

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Starlette parses (and spools) a whole multipart body before a route runs: refuse big ones
        and cross-origin ones first."""
        if request.method == "POST":
            origin, host = request.headers.get("origin"), request.headers.get("host", "")
            if origin is not None and urlsplit(origin).netloc != host:
                return JSONResponse({"detail": f"cross-origin POST from {origin} refused"}, 403)
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return JSONResponse({"detail": "a POST needs a Content-Length header"}, 411)
            if int(length) > max_request:
                return JSONResponse({"detail": f"request of {length} bytes is over the limit of "
                                               f"{max_request}"}, 413)
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    if allowed_hosts is not None:  # added last, so it runs first
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.exception_handler(RequestError)
    async def refused(_request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    def photo_of(upload: UploadFile) -> Photo:
        return decode_upload(upload.filename, upload.file.read(max_upload_bytes + 1), max_upload_bytes)

    def web_file(body: bytes, kind: str):
        return lambda: Response(body, media_type=kind)

    for route, (body, kind) in pages.items():
        app.add_api_route(route, web_file(body, kind), include_in_schema=False, methods=["GET"])

    @app.get("/api/health", response_model=HealthOut)
    def health() -> dict:
        return {"status": "ok", **gallery.describe(), "threshold": threshold.value,
                "threshold_source": threshold.source, "threshold_calibrated": threshold.calibrated,
                "enrol_requires_token": token is not None, "max_upload_bytes": max_upload_bytes,
                "max_k": MAX_K}

    @app.get("/api/identities", response_model=list[IdentityOut])
    def identities() -> list[dict]:
        return gallery.identities()

    @app.post("/api/search", response_model=SearchOut)
    def search(image: UploadFile = File(description="a face crop"), k: int = Form(5, ge=1, le=MAX_K),
               same_above: float | None = Form(None, alias="threshold", ge=-1, le=1)) -> dict:
        cut = threshold.value if same_above is None else same_above
        hits = gallery.search(photo_of(image).image, k)
        matches = [{**vars(hit), "same_person": hit.score > cut,
                    "thumbnail": f"/api/thumbnail/{hit.record}" if gallery.has_thumbnails else None}
                   for hit in hits]
        best = hits[0].identity if hits and hits[0].score > cut else "unknown"
        return {"identity": best, "threshold": cut, "matches": matches}

    @app.post("/api/enrol", response_model=EnrolOut, responses={401: {"description": "no or wrong token"}})
    def enrol(name: str = Form(max_length=MAX_NAME_LENGTH * 4),
              images: list[UploadFile] = File(description=f"1 to {MAX_ENROL_IMAGES} photos of the person"),
              credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> dict:
        given = credentials.credentials if credentials else ""
        if token is not None and not secrets.compare_digest(given.encode(), token.encode()):
            raise RequestError(401, "enrolment needs this server's token (Authorization: Bearer <token>)")
        if len(images) > MAX_ENROL_IMAGES:
            raise RequestError(413, f"{len(images)} photos in one enrolment; at most {MAX_ENROL_IMAGES}")
        person = clean_name(name)
        records = gallery.enrol(person, [photo_of(upload) for upload in images])
        return {"identity": person, "added": len(records), "records": records, "index_size": len(gallery)}

    png = {200: {"content": {"image/png": {}}}, 404: {"description": "no such record"}}

    @app.get("/api/thumbnail/{record}", response_class=Response, responses=png)
    def thumbnail(record: int = PathParam(ge=0)) -> Response:
        return Response(gallery.thumbnail(record), media_type="image/png",
                        headers={"Cache-Control": "no-cache"})  # another index may be served here later

    return app


@contextlib.contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0, **config) -> Iterator[str]:
    """uvicorn serving `app` in a thread on `host:port` (0: a free port); yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {host}:{sock.getsockname()[1]}")
            time.sleep(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def main_serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mobilenets face-embedding serve",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="directory written by `index`")
    parser.add_argument("--weights", help="the checkpoint the index was built with, if it has moved")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", help=f"enrolment needs this bearer token (default: ${TOKEN_ENV})")
    parser.add_argument("--threshold", type=float, help="default 'same person' cosine threshold")
    parser.add_argument("--metrics", help="a test run's test_metrics.json whose lfw_threshold is the default")
    parser.add_argument("--max-upload-mb", type=float, default=8.0, help="largest accepted image file")
    parser.add_argument("--enrol-dir", help="where enrolled photos are kept (default: INDEX-enrolled)")
    parser.add_argument("--runtime", choices=("torch", "onnx", "onnx-int8"), default="torch",
                        help="embed with PyTorch, or on ONNX Runtime (fp32 or int8)")
    parser.add_argument("--model", help="an exported embedder (`mobilenets export --checkpoint`); without "
                        "it, --runtime onnx* exports the checkpoint beside the index first")
    args = parser.parse_args(argv)
    if args.max_upload_mb <= 0:
        parser.error(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        gallery = FaceGallery(args.index, weights=args.weights, enrol_dir=args.enrol_dir,
                              runtime=args.runtime, model_file=args.model)
        threshold = resolve_threshold(args.threshold, args.metrics, gallery.index_dir, gallery.weights)
    except (IndexFormatError, FileNotFoundError, ValueError) as err:
        print(f"mobilenets face-embedding serve: {err}", file=sys.stderr)
        return 2
    local = args.host in LOCAL_HOSTS
    if not local and token is None:
        print(f"warning: serving on {args.host} without --token: anyone who reaches it can enrol",
              file=sys.stderr)
    limit = int(args.max_upload_mb * 2**20)
    app = create_app(gallery, threshold=threshold, token=token, max_upload_bytes=limit,
                     allowed_hosts=list(LOCAL_HOSTS) if local else None)
    described = gallery.describe()
    print(f"serving {described['index_size']} faces of {described['identities']} people from {args.index} "
          f"(threshold {threshold.value:+.3f}, {threshold.source}): open http://{args.host}:{args.port}/")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
