"""`tunix-tui serve`: the console in a real headless Chromium (Debian's), through textual-serve, on 127.0.0.1 only.

The page loads, the console's home screen lists the profiles, and a key typed in the page reaches the app (the help
screen opens): checked in what the console sends to the page and in screenshots taken before and after the key."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from browser import Chromium, find_chromium, free_port, png_pixels

ROOT = Path(__file__).resolve().parent.parent


def test_console_command_and_bad_port(tmp_path):
    from tunix_tui.serve import console_command

    cmd = console_command("profiles", tmp_path / "runs")
    assert "-m tunix_tui.cli --profiles-dir" in cmd and str(tmp_path / "runs") in cmd
    done = subprocess.run([sys.executable, "-m", "tunix_tui.cli", "serve", "--port", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--port must be between 1 and 65535" in done.stderr


def test_png_reader_on_a_known_image():
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 7
    rows = b"".join(bytes([0]) + pixels[y].tobytes() for y in range(2))   # filter 0 (none)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 2, 8, 6, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    assert np.array_equal(png_pixels(png), pixels)


@pytest.mark.slow
def test_the_console_in_a_headless_browser(tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium: install Debian's package (apt-get install -y chromium)")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tunix_tui.cli", "--output-dir", str(tmp_path / "runs"),
                               "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    page = resp.read().decode()
                    assert resp.status == 200
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("the server did not answer: "
                                         + (server.stdout.read().decode() if server.poll() is not None else ""))
                time.sleep(0.3)
        assert "textual.js" in page
        asyncio.run(_drive(binary, url, tmp_path))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


async def _wait_for_text(browser: Chromium, needle: str, start: int = 0, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = await browser.frames_text(start)
        if needle in text:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} never reached the page; it got {len(text)} characters: {text[-2000:]!r}")
        await asyncio.sleep(0.5)


async def _drive(binary: str, url: str, tmp_path: Path) -> None:
    browser = Chromium(binary, width=800, height=500)
    try:
        await browser.connect()
        await browser.call("Page.navigate", url=url)
        home = await _wait_for_text(browser, "Profiles")
        for profile in ("quickstart", "tiny"):       # the home screen lists the project's profiles
            await _wait_for_text(browser, profile)
        assert "Runs" in home
        await asyncio.sleep(2.0)                     # let the page paint what it received
        before = await browser.screenshot(tmp_path / "home.png")
        assert before.shape[:2] == (500, 800) and len(np.unique(before.reshape(-1, before.shape[2]), axis=0)) > 4
        await browser.evaluate("document.querySelector('.xterm-helper-textarea').focus()")
        start = await browser.frame_count()
        await browser.press("?")                     # the home screen's help key
        await _wait_for_text(browser, "Home keys", start)
        await asyncio.sleep(2.0)
        after = await browser.screenshot(tmp_path / "help.png")
        changed = np.any(before[..., :3] != after[..., :3], axis=2).mean()
        assert changed > 0.02, f"only {changed:.1%} of the pixels changed after the key press"
    finally:
        await browser.close()
