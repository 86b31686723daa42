"""End to end: ``diffdiff serve`` in a subprocess, driven by a real headless Chromium.

Debian's ``chromium`` is driven by Playwright for Python with ``executable_path`` (a browser
download by Playwright fails on these machines); ``.ci/install-browser.sh`` installs both. Without
them the test skips and says why.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from diffdiff.testing import sample_image

CHROMIUM = os.environ.get("DIFFDIFF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # The machine's network is closed: without these Chromium keeps calling Google's hosts.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _browser_or_skip() -> object:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run .ci/install-browser.sh (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed: run .ci/install-browser.sh (pip install playwright)")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def server(tiny_sd_path: Path, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from diffdiff.cli import main; main()", "serve", "--model", str(tiny_sd_path),
         "--port", str(port), "--max-pixels", str(512 * 512)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150  # imports torch, diffusers and gradio: slow on a loaded machine
        while True:
            if proc.poll() is not None:
                pytest.fail(f"diffdiff serve exited with {proc.returncode}:\n{(tmp_path / 'serve.log').read_text()}")
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"diffdiff serve did not answer in 150 s:\n{(tmp_path / 'serve.log').read_text()}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_paint_map_and_edit_in_browser(server: str, tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    image_path = tmp_path / "photo.png"
    sample_image(128, 96, seed=7).save(image_path)
    shots = Path(os.environ.get("DIFFDIFF_E2E_SHOTS", tmp_path))

    with sync_playwright() as pw:  # type: ignore[operator]
        ctx = pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium-", dir=tmp_path), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1400, "height": 1100},
        )
        try:
            page = ctx.new_page()
            page.set_default_timeout(30_000)
            page.goto(server + "/")
            page.wait_for_selector("#dd-canvas input[type=file]", state="attached")

            # Upload into the editor; the preview appears once the server has the image. (Gradio
            # keeps a connection open, so there is no "network idle": retry until it sticks.)
            preview_img = page.locator("#dd-preview img")
            file_input = page.locator("#dd-canvas input[type=file]").first
            file_input.set_input_files(str(image_path))
            start = last_upload = time.monotonic()
            while not preview_img.count():
                now = time.monotonic()
                if now - start > 200:  # generous: CI machines can be slow to start Gradio
                    page.screenshot(path=str(shots / "e2e-upload-failed.png"), full_page=True)
                    pytest.fail("the uploaded image never reached the server (screenshot e2e-upload-failed.png)")
                if now - last_upload > 25:
                    # An upload before the page's scripts were live is lost: reload and upload again.
                    page.reload()
                    page.wait_for_selector("#dd-canvas input[type=file]", state="attached")
                    preview_img = page.locator("#dd-preview img")
                    file_input = page.locator("#dd-canvas input[type=file]").first
                    page.wait_for_timeout(1500)
                    file_input.set_input_files(str(image_path))
                    last_upload = time.monotonic()
                page.click("#dd-show")
                page.wait_for_timeout(700)

            # Make a map with the toolkit and check the level summary for the chosen steps.
            page.fill("#dd-steps input[type=number]", "8")
            page.keyboard.press("Enter")
            page.click("#dd-gradient")
            page.wait_for_function(
                "() => document.querySelector('#dd-levels')?.innerText.includes('9 levels')", timeout=30_000)
            page.fill("#dd-prompt textarea", "a red house")
            page.fill("#dd-seed input", "5")
            page.screenshot(path=str(shots / "e2e-before-run.png"), full_page=True)

            page.click("#dd-run")
            result = page.locator("#dd-gallery img").first
            result.wait_for(state="visible", timeout=60_000)
            page.wait_for_function(
                "() => { const i = document.querySelector('#dd-gallery img'); return i && i.naturalWidth > 0; }")
            page.screenshot(path=str(shots / "e2e-result.png"), full_page=True)

            # The gallery serves the PNG file the server wrote: same size, parameters inside.
            src = result.get_attribute("src")
            assert src
            body = page.request.get(src if src.startswith("http") else server + "/" + src.lstrip("/")).body()
            out = Image.open(io.BytesIO(body))
            assert out.format == "PNG" and out.size == (128, 96)
            meta = json.loads(out.info["diffdiff"])
            assert (meta["prompt"], meta["seed"], meta["steps"]) == ("a red house", 5, 8)
            assert "diffdiff serve" in meta["served_by"]

            # The strength fan tab reuses the Edit tab's image and settings (when Editor.fan exists).
            page.get_by_role("tab", name="Strength fan").click()
            if page.locator("#dd-fan-run").count():
                page.click("#dd-fan-run")
                page.wait_for_function(
                    "() => { const i = document.querySelector('#dd-fan-out img'); return i && i.naturalWidth > 0; }",
                    timeout=60_000)
                page.screenshot(path=str(shots / "e2e-fan.png"), full_page=True)
        finally:
            ctx.close()
    # The server survived the session.
    assert httpx.get(f"{server}/api/health", timeout=5).json()["queue"]["running"] == 0
