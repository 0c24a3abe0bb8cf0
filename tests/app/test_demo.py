"""The web demo: its request logic directly, then the running app in a real headless Chromium.

The browser tests start ``elastictok demo`` on a free 127.0.0.1 port with a tiny model, drive Debian's
``chromium`` through Playwright (``executable_path``; no downloaded browser), upload real media from
``../shared/data`` and check what the page shows. ``scripts/ci_browser.sh`` installs what they need;
without it they skip with a message saying what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from elastictok.app.cli import build_parser
from elastictok.app.demo import DemoError, DemoRunner, Limits, token_overlay
from helpers import DATA, need_dir, tiny

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SERVER_FRAMES = 8  # --max-frames of the test server: clips stay two 4-frame blocks
TOKENS_RE = re.compile(r"(\d+) / (\d+) tokens")


def _image(name: str = "05.png") -> Path:
    return need_dir(DATA / "images" / "kodak", "the real test images") / name


def _clip(name: str = "bedroom.mp4") -> Path:  # 960x540, 6.7 s
    return need_dir(DATA / "video" / "dev" / "sam2", "the real dev clips") / name


@pytest.fixture(scope="module")
def model():
    return tiny("tiny-axial", frame_size=(64, 64))


# ---------------------------------------------------------------------------------------------
# The request logic, without Gradio


def test_overlay_dims_the_patches_of_dropped_tokens(model):
    video = torch.ones(1, 3, 6, 16, 24) * 0.5  # two blocks (4 + 2 frames), a 2x3 grid of 8x8 patches
    video[:, :, 5] = 0.9  # the last frame, which pads the second block
    strips = token_overlay(video[0], [8, 9], model.config, min_height=16)
    assert [c for _, c in strips] == [
        "block 0: 8/24 tokens kept, frames 0-3",
        "block 1: 9/24 tokens kept, frames 4-5 + 2 padding frames (copies of frame 5)",
    ]
    first, second = (s for s, _ in strips)
    assert first.shape == second.shape == (16, 4 * 24 + 3 * 4, 3)

    def tile(strip, k):  # frame k of a strip, True where a patch is kept (not dimmed)
        return strip[:, k * 28 : k * 28 + 24, 0] > 150

    assert tile(first, 0).all()  # tokens 0-5: the whole first frame
    assert tile(first, 1)[:8, :16].all() and not tile(first, 1)[:8, 16:].any() and not tile(first, 1)[8:].any()
    assert not tile(first, 2).any() and not tile(first, 3).any()
    assert tile(second, 0).all() and tile(second, 1)[:8].all() and not tile(second, 1)[8:].any()
    assert not tile(second, 2).any() and (second[:, 2 * 28 : 2 * 28 + 24] == second[:, 3 * 28 : 3 * 28 + 24]).all()
    assert second[0, 2 * 28, 0] > first[0, 2 * 28, 0]  # padding slices show the (brighter) last frame


def test_runner_codes_an_image_and_writes_every_output(model, tmp_path):
    runner = DemoRunner(model, Limits(), work_dir=tmp_path)
    r = runner.run(_image(), fixed=True, fixed_percent=25)
    stats = r["stats"]
    assert stats["frame_size"] == [64, 96]
    # The context window defaults to what the model was trained with (tiny presets: 4 blocks).
    assert stats["settings"] == {"mode": "fixed", "num_tokens": 96, "min_tokens": None, "max_tokens": None,
                                 "context_blocks": 3, "keyframe_interval": None, "cut_threshold": None}
    assert TOKENS_RE.search(r["summary"]).groups() == ("96", "384")
    for key in ("compare", "recon", "plot", "etok"):
        assert Path(r[key]).is_file() and Path(r[key]).parent == Path(r["dir"])
    assert r["overlay_captions"] == ["block 0: 96/384 tokens kept, frame 0 + 3 padding frames (copies of frame 0)"]
    assert Path(r["overlay"]).is_file()
    from elastictok.tokenfile.format import read_tokens

    assert read_tokens(r["etok"], model).counts.tolist() == [[96]]
    # The budget caps every block of an adaptive search (a random model never meets MSE 0.003).
    r = runner.run(_image(), metric="mse", budget_percent=10)
    assert [b["tokens"] for b in r["stats"]["blocks"]] == [38] and r["stats"]["settings"]["max_tokens"] == 38


def test_runner_caps_frames_and_resolution_of_videos(model, tmp_path):
    runner = DemoRunner(model, Limits(max_frames=SERVER_FRAMES, max_video_resolution=32), work_dir=tmp_path)
    r = runner.run(_clip(), metric="psnr", threshold=40, resolution=64, frames=100)
    assert r["video"] and r["compare"].endswith("compare.mp4")
    assert r["stats"]["frames"] == SERVER_FRAMES and r["stats"]["frame_size"] == [32, 56]
    assert [c.split(":")[0] for c in r["overlay_captions"]] == ["block 0", "block 1"]
    assert "first 8 frames" in r["summary"] and "Resolution lowered to 32 px" in r["summary"]


def test_runner_refuses_large_long_and_foreign_inputs_with_a_message(model, tmp_path):
    with pytest.raises(DemoError, match=r"05.png is 0.7 MB; this demo takes files up to 0.5 MB"):
        DemoRunner(model, Limits(max_upload_mb=0.5), work_dir=tmp_path).run(_image())
    with pytest.raises(DemoError, match=r"bedroom.mp4 lasts 6.7 s; this demo takes videos up to 5 s"):
        DemoRunner(model, Limits(max_seconds=5), work_dir=tmp_path).run(_clip())
    with pytest.raises(DemoError, match=r"takes images up to 0.1 megapixels"):
        DemoRunner(model, Limits(max_pixels=100_000), work_dir=tmp_path).run(_image())
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DemoError, match="unsupported file type .txt"):
        DemoRunner(model, work_dir=tmp_path).run(text)
    with pytest.raises(DemoError, match="upload an image or a video first"):
        DemoRunner(model, work_dir=tmp_path).run(tmp_path / "missing.png")


def test_cli_has_a_demo_verb():
    args = build_parser().parse_args(["demo", "--port", "7999", "--max-frames", "16"])
    assert args.func.__name__ == "cmd_demo" and args.port == 7999 and args.host == "127.0.0.1" and args.max_frames == 16


# ---------------------------------------------------------------------------------------------
# The Gradio app


def _gradio():
    return pytest.importorskip(
        "gradio", reason="gradio is not installed: pip install 'elastictok[demo]' (scripts/ci_browser.sh)"
    )


def test_untrained_model_is_labelled_on_the_page(model, tmp_path):
    _gradio()
    from elastictok.app.demo import build_app

    def markdown_ids(app):
        return {b.elem_id: getattr(b, "value", None) for b in app.blocks.values() if b.elem_id}

    ids = markdown_ids(build_app(model, trained=False, work_dir=tmp_path / "a"))
    assert "Untrained model" in ids["untrained-warning"]
    assert "untrained-warning" not in markdown_ids(build_app(model, trained=True, work_dir=tmp_path / "b"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model):
    """``elastictok demo`` on a free 127.0.0.1 port with the embedded default model (a tiny random one
    when its weights are missing); stopped after the module."""
    _gradio()
    need_dir(DATA, "the real test media")
    base = tmp_path_factory.mktemp("demo")
    model_dir = base / "tiny-axial-untrained"  # shown on the page
    model.save_pretrained(model_dir)
    tmp = base / "tmp"  # the server's temporary files (its outputs and Gradio's cache) stay in here
    tmp.mkdir()
    port = _free_port()
    env = dict(os.environ, TMPDIR=str(tmp), GRADIO_ANALYTICS_ENABLED="False", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    from elastictok.weights.pretrained import WEIGHTS_NAME, default_model_dir

    chosen = [] if (default_model_dir() / WEIGHTS_NAME).is_file() else ["--model", str(model_dir)]
    cmd = [sys.executable, "-m", "elastictok", "demo", *chosen, "--port", str(port), "--device", "cpu",
           "--max-frames", str(SERVER_FRAMES), "--max-seconds", "8", "--max-upload-mb", "5"]
    log = (base / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the demo server exited ({proc.returncode}):\n{(base / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the demo server did not answer in 120 s:\n{(base / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield SimpleNamespace(url=url, log=base / "server.log")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="playwright is not installed: pip install 'elastictok[browser]' (scripts/ci_browser.sh)",
    )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (scripts/ci_browser.sh) for the browser tests")
    sync_api.expect.set_options(timeout=60_000)
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server.url)
    page.wait_for_selector("#run-button")
    yield page
    context.close()


def _upload(page, path: Path) -> None:
    from playwright.sync_api import expect

    page.locator("#input-file input[type=file]").set_input_files(str(path))
    expect(page.locator("#input-file a")).to_have_attribute("href", re.compile(re.escape("/" + path.name) + "$"))


def _set_resolution(page, px: int) -> None:
    """Code at ``px`` on the shorter side (the sizes below are for 64; the default model's own is larger)."""
    box = page.locator("#resolution input[type=number]")
    box.fill(str(px))
    box.press("Enter")


def _tokens_shown(page) -> tuple[int, int]:
    from playwright.sync_api import expect

    summary = page.locator("#summary")
    expect(summary).to_contain_text(TOKENS_RE)
    kept, total = map(int, TOKENS_RE.search(summary.inner_text()).groups())
    return kept, total


def test_browser_image_shows_reconstruction_tokens_and_overlay(page, tmp_path):
    from playwright.sync_api import expect

    _upload(page, _image())
    _set_resolution(page, 64)
    page.locator("#fixed input[type=checkbox]").check()
    page.locator("#fixed-percent input[type=number]").fill("40")  # 154 of each block's 384 tokens
    page.locator("#fixed-percent input[type=number]").press("Enter")
    page.click("#run-button")
    assert _tokens_shown(page) == (154, 384)
    recon = page.locator("#compare-image img")
    expect(recon).to_be_visible()
    # original | gap | reconstruction at 96x64, enlarged 4x for the page
    assert recon.evaluate("img => img.complete && [img.naturalWidth, img.naturalHeight]") == [4 * (2 * 96 + 4), 4 * 64]
    expect(page.locator("#blocks-plot img")).to_be_visible()
    expect(page.locator("#overlay img")).to_be_visible()
    expect(page.locator("#etok a")).to_have_attribute("href", re.compile(r"/05\.etok$"))
    expect(page.locator("#stats")).to_contain_text("total_tokens")
    # Only to tmp: docs/demo.png, the README's screenshot, is made by `python scripts/demo_screenshot.py`.
    page.screenshot(path=str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_browser_clip_shows_a_video_reconstruction(page):
    from playwright.sync_api import expect

    _upload(page, _clip())
    _set_resolution(page, 64)
    page.click("#run-button")
    kept, total = _tokens_shown(page)
    assert 0 < kept <= total == 2 * 8 * 14 * 4  # two blocks of 4 frames of 8x14 patches (64x112)
    expect(page.locator("#summary")).to_contain_text(f"{SERVER_FRAMES} frames")
    video = page.locator("#compare-video video")
    expect(video).to_be_visible()
    assert video.evaluate("v => v.currentSrc").endswith(".mp4")
    sheet = page.locator("#overlay img")  # two blocks: two strips of 4 frames under their captions
    expect(sheet).to_be_visible()
    assert sheet.evaluate("img => img.naturalHeight") == 2 * (20 + 3 * 64 + 6) + 6
    expect(page.locator("#compare-image")).to_be_hidden()


def test_browser_sample_button_and_limits_message(page, tmp_path):
    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect

    big = tmp_path / "noise.png"  # incompressible: about 6.9 MB, over the server's 5 MB limit
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1200, 2000, 3), dtype=np.uint8)).save(big)
    page.locator("#input-file input[type=file]").set_input_files(str(big))
    expect(page.get_by_text("exceed the maximum allowed size of 5").first).to_be_visible()  # Gradio's own check
    _upload(page, _clip("01_dog.mp4"))  # 9.6 s: over the server's 8 s limit
    page.click("#run-button")
    expect(page.get_by_text("01_dog.mp4 lasts 9.6 s; this demo takes videos up to 8 s").first).to_be_visible()
    page.click("#sample-image")  # replaces the upload and runs
    expect(page.locator("#input-file a")).to_have_attribute("href", re.compile(r"/sample_image\.jpg$"))
    kept, total = _tokens_shown(page)
    assert 0 < kept <= total
    expect(page.locator("#compare-image img")).to_be_visible()


def _file(value):
    """The local path in a gradio_client output: a path, an update {"value": ...} or a video {"video": ...}."""
    while isinstance(value, dict):
        value = value.get("value") or value.get("video") or value.get("path")
    return value


def test_eight_concurrent_requests_all_complete(server, tmp_path, monkeypatch):
    gradio_client = pytest.importorskip(
        "gradio_client", reason="gradio_client comes with gradio: pip install 'elastictok[demo]'"
    )
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the client leaves a folder per download there
    client = gradio_client.Client(server.url, verbose=False, download_files=str(tmp_path))
    inputs = [_image(f"{i:02d}.png") for i in range(1, 7)] + [_clip(), _clip()]
    budgets = [100, 50, 25, 10, 100, 50, 100, 40]

    def one(i: int):
        return client.predict(gradio_client.handle_file(str(inputs[i])), "mse", 0.003, budgets[i], False, 25, 64,
                              SERVER_FRAMES, api_name="/reconstruct")

    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    seconds = time.monotonic() - start
    for i, (summary, image, video, plot, overlay, etok, stats) in enumerate(results):
        kept, total = map(int, TOKENS_RE.search(summary).groups())
        assert kept == stats["total_tokens"] and total == stats["max_total_tokens"]
        per_block = stats["blocks"][0]["max_tokens"]
        cap = round(budgets[i] / 100 * per_block)
        assert stats["settings"]["max_tokens"] == (cap if cap < per_block else None)
        assert all(b["tokens"] <= cap for b in stats["blocks"])
        compare = _file(video if i >= 6 else image)  # the visible one of the two
        assert Path(compare).is_file() and Path(etok).is_file() and Path(plot).is_file()
        assert Path(_file(overlay)).is_file()
    assert seconds < 120
    # The queue let at most two requests code at once (the server prints one line per request).
    running = [int(n) for n in re.findall(r"\[demo\] coding .* \((\d+) running\)", server.log.read_text())]
    assert len(running) >= 8 and max(running) <= 2
