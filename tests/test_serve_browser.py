"""The face search page in a real headless Chromium (Debian's `chromium`, driven by Playwright).

Nothing downloads a browser: Playwright is pointed at the system's chromium, which `make test`
installs when it is missing. uvicorn serves the page on 127.0.0.1 from a thread, with the same
host and origin checks and the enrolment token that `mobilenets face-embedding serve` uses.
Screenshots go to the test's tmp_path and are copied to runs/serve-browser/ to look at.
"""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image
from test_face_commands import SIZE, save_checkpoint

from tasks.face_embedding.commands import build_index
from tasks.face_embedding.serve import LOCAL_HOSTS, create_app, running_server
from tasks.face_embedding.serve_gallery import FaceGallery, Threshold
from tasks.face_embedding.synthetic import SyntheticFaces, write_identity_folders

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' installs playwright")
expect = sync_api.expect
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `make test` installs it (apt-get)")
TOKEN = "page-token"
HOSTILE_NAME = '<img src=x onerror="window.pwned = 1">'

DROP = """async ([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type: "image/png" }));
  return transfer;
}"""


def wait_until(page, predicate: str, seconds: float = 10) -> None:
    """Poll `predicate` (a JS function) with evaluate: the page's CSP forbids wait_for_function's eval."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.05)


def test_page_searches_enrols_and_escapes_names(tmp_path):
    save_checkpoint(tmp_path / "face.ckpt", seed=0)
    write_identity_folders(SyntheticFaces(6, 2, size=SIZE), tmp_path / "gallery")
    build_index(tmp_path / "gallery", tmp_path / "face.ckpt", tmp_path / "index")
    app = create_app(FaceGallery(tmp_path / "index"), threshold=Threshold(0.5, "test", True), token=TOKEN,
                     allowed_hosts=list(LOCAL_HOSTS))
    query = tmp_path / "gallery" / "synth_000003" / "synth_000003_0002.jpg"
    stranger, newcomer = tmp_path / "stranger.png", [tmp_path / "new1.png", tmp_path / "new2.png"]
    faces = SyntheticFaces(2, 2, size=SIZE, identity_offset=300)
    Image.fromarray(faces.image(0)).save(stranger)
    for i, path in enumerate(newcomer):
        Image.fromarray(faces.image(2 + i)).save(path)
    (tmp_path / "notes.jpg").write_bytes(b"not a photo at all")
    errors: list[str] = []

    with running_server(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("pageerror", lambda err: errors.append(str(err)))
        refusals = "Failed to load resource: the server responded with a status of 4"  # asked for below
        page.on("console", lambda msg: errors.append(msg.text)
                if msg.type == "error" and not msg.text.startswith(refusals) else None)
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]")
        assert "12 faces of 6 people" in page.text_content("#status")
        assert "face.ckpt" in page.text_content("#status")
        assert page.locator("#identities li").count() == 6
        assert page.is_visible("#token-field")  # this server's enrolment needs the token

        page.set_input_files("#query-file", str(query))  # the file picker
        page.wait_for_selector("#results:not([hidden]) .match")
        assert page.locator(".match").count() == 5
        assert page.locator(".match .name").first.text_content() == "synth_000003"
        assert page.text_content("#verdict").startswith("synth_000003")
        wait_until(page, "() => [...document.querySelectorAll('#results img')].every((i) => i.naturalWidth)")
        shot = tmp_path / "face_search_page.png"
        page.screenshot(path=str(shot), full_page=True)

        transfer = page.evaluate_handle(DROP, [base64.b64encode(stranger.read_bytes()).decode(), "s.png"])
        page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})  # drag and drop
        expect(page.locator(".match .name").first).not_to_have_text("synth_000003")
        page.fill("#threshold", "0.999")  # nobody is that close to a stranger: "unknown"
        assert page.get_attribute("#verdict", "class") == "unknown"
        assert page.text_content("#verdict").startswith("unknown (best: ")
        page.fill("#threshold", "-1")
        assert page.get_attribute("#verdict", "class") == "known"

        page.set_input_files("#query-file", str(tmp_path / "notes.jpg"))
        expect(page.locator("#message")).to_contain_text("422")
        assert "not a JPEG/PNG/WEBP/BMP image" in page.text_content("#message")

        page.fill("#enrol-name", HOSTILE_NAME)
        page.set_input_files("#enrol-files", [str(path) for path in newcomer])
        page.click("#enrol-form button")  # no token yet: refused
        expect(page.locator("#message")).to_contain_text("401")
        page.fill("#enrol-name", HOSTILE_NAME)
        page.set_input_files("#enrol-files", [str(path) for path in newcomer])
        page.fill("#enrol-token", TOKEN)
        page.click("#enrol-form button")
        expect(page.locator("#enrol-result")).to_contain_text("enrolled")
        expect(page.locator("#status")).to_contain_text("14 faces of 7 people")
        assert HOSTILE_NAME in page.locator("#identities li").all_text_contents()[-1]

        page.set_input_files("#query-file", str(newcomer[1]))
        expect(page.locator(".match .name").first).to_have_text(HOSTILE_NAME)
        page.fill("#threshold", "0.5")
        assert page.text_content("#verdict").startswith(HOSTILE_NAME)
        assert page.evaluate("window.pwned") is None  # the name stayed text: its onerror never ran
        assert page.locator("#identities img, #verdict img, .name img").count() == 0
        page.screenshot(path=str(tmp_path / "face_search_enrolled.png"), full_page=True)
        browser.close()

    assert errors == []
    assert shot.stat().st_size > 10_000
    kept = Path(__file__).resolve().parents[1] / "runs" / "serve-browser"  # outlives pytest's tmp dirs
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("face_search_page.png", "face_search_enrolled.png"):
        shutil.copy(tmp_path / name, kept / name)
    print(f"screenshots: {shot}, copied to {kept}")
