"""Regenerate ``docs/demo.png``, the README's screenshot of the web demo, showing what a user gets.

Starts ``elastictok demo`` with the embedded default model on a free 127.0.0.1 port, opens it in
headless Chromium (Debian's, driven by Playwright through ``executable_path``), uploads a real photo
(Kodak image 23 from ../shared/data, else the bundled sample), runs it at the page's defaults (the
model's own resolution and its declared quality target) and saves the top of the page as the PNG.
The test suite never runs this; run it after a change that alters the page or the default model::

    python scripts/demo_screenshot.py [--image PATH] [--output docs/demo.png] [--chromium /usr/bin/chromium]

Needs the demo and browser extras and chromium (``bash scripts/ci_browser.sh`` installs them).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from elastictok.utils.files import atomic_path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ELASTICTOK_SHARED", REPO.parent / "shared"))
PHOTOS = [
    SHARED / "data" / "images" / "kodak" / "23.png",
    REPO / "src" / "elastictok" / "media" / "assets" / "sample.jpg",
]
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TOKENS_RE = re.compile(r"(\d+) / (\d+) tokens")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(work: Path, port: int) -> subprocess.Popen:
    """``elastictok demo`` with the embedded model; its temporary files stay under ``work``."""
    tmp = work / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), GRADIO_ANALYTICS_ENABLED="False", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "elastictok.app.cli", "demo", "--port", str(port), "--device", "cpu"]
    log = (work / "server.log").open("w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)


def _wait_for(url: str, proc: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the demo server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"the demo server did not answer in {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def _save(png: bytes, output: Path) -> None:
    """The screenshot as a PNG, palette-reduced when it would be large, written atomically."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    if buffer.tell() > 350_000:
        buffer = io.BytesIO()
        small = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        small.save(buffer, "PNG", optimize=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as temp:
        temp.write_bytes(buffer.getvalue())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", type=Path, help=f"the photo to show (default: the first of {[str(x) for x in PHOTOS]})")
    p.add_argument("--output", type=Path, default=REPO / "docs" / "demo.png")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--timeout", type=float, default=600, help="seconds the coding may take")
    args = p.parse_args()

    from playwright.sync_api import expect, sync_playwright

    from elastictok.weights.pretrained import WEIGHTS_NAME, default_model_dir

    if not (default_model_dir() / WEIGHTS_NAME).is_file():
        sys.exit("the embedded model's weights are missing: the screenshot would show an untrained model")
    image = args.image or next((x for x in PHOTOS if x.is_file()), None)
    if image is None or not image.is_file():
        sys.exit(f"no photo to show: {args.image or PHOTOS}")
    with tempfile.TemporaryDirectory(prefix="elastictok-screenshot-") as scratch:
        work = Path(scratch)
        port = _free_port()
        server = _serve(work, port)
        try:
            url = f"http://127.0.0.1:{port}/"
            _wait_for(url, server, work / "server.log")
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_context(viewport={"width": args.width, "height": args.height}).new_page()
                    page.set_default_timeout(args.timeout * 1000)
                    expect.set_options(timeout=args.timeout * 1000)
                    page.goto(url)
                    page.wait_for_selector("#run-button")
                    page.locator("#input-file input[type=file]").set_input_files(str(image))
                    expect(page.locator("#input-file a")).to_have_attribute(
                        "href", re.compile(re.escape("/" + image.name) + "$"))
                    start = time.monotonic()
                    page.click("#run-button")  # the defaults: the model's resolution and declared target
                    summary = page.locator("#summary")
                    expect(summary).to_contain_text(TOKENS_RE)
                    expect(page.locator("#compare-image img")).to_be_visible()
                    expect(page.locator("#overlay img")).to_be_visible()
                    expect(page.locator("#blocks-plot img")).to_be_visible()
                    page.wait_for_function("() => [...document.images].every(img => img.complete)")
                    seconds = time.monotonic() - start
                    page.evaluate("window.scrollTo(0, 0)")
                    _save(page.screenshot(type="png"), args.output)
                    print(f"{image.name}: {summary.inner_text().splitlines()[0]} ({seconds:.0f} s in the browser)")
                finally:
                    browser.close()
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
