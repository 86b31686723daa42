"""Soak: 200 mixed requests against a real ``diffdiff serve`` subprocess on 127.0.0.1 (loopback only).

Good edits, fans, auto maps and DiffEdits; malformed requests (not an image, truncated PNG,
missing and repeated fields, bad values, a JSON body, a broken multipart body, undeclared
methods, unknown paths); oversized ones (pixels above the limit, a decompression bomb, a
Content-Length far above the upload limit); and bursts of concurrent edits beyond the queue.
Every answer must be the declared status with a one-line JSON error, never a 5xx other than
503 + Retry-After in a burst. Afterwards ``/api/health`` answers with an empty queue and the
server's resident memory has grown by less than :data:`RSS_GROWTH_LIMIT_MB` over a warmed-up
baseline. Bounded: exactly :data:`TOTAL` requests, each with a timeout, the whole run under
:data:`SOAK_SECONDS`.
"""

from __future__ import annotations

import io
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from diffdiff.testing import sample_image  # noqa: E402

HOST = "127.0.0.1"  # loopback only: nothing outside this machine can reach the server
TOTAL = 200
BURSTS = 5
BURST_SIZE = 8  # concurrent edits per burst, against a capacity of 2 (1 running + 1 waiting)
SOAK_SECONDS = 180.0
REQUEST_TIMEOUT = 60.0
MAX_PIXELS = 96 * 96
#: Resident memory may grow by less than this over the warmed-up baseline during the soak.
RSS_GROWTH_LIMIT_MB = 64.0
Kind = Callable[["Soak"], set[int]]


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


@pytest.fixture(scope="module")
def server(tiny_sd_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    if not Path("/proc/self/status").exists():
        pytest.skip("reads the server's memory from /proc (Linux)")
    tmp = tmp_path_factory.mktemp("soak")
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(tmp / "gradio"), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    log_path = tmp / "serve.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from diffdiff.cli import main; main()", "serve", "--model", str(tiny_sd_path),
         "--host", HOST, "--port", str(port), "--max-pixels", str(MAX_PIXELS), "--queue-size", "1", "--max-steps", "4"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 150  # imports torch, diffusers and gradio: slow on a loaded machine
        while True:
            if proc.poll() is not None:
                pytest.fail(f"diffdiff serve exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"diffdiff serve did not answer in 150 s:\n{log_path.read_text()}")
            time.sleep(0.3)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


class Soak:
    """One client, the inputs, and a record of every answer."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.client = httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT)
        self.image = png(sample_image(64, 48, seed=1))
        cmap = np.zeros((48, 64), np.uint8)
        cmap[:, 32:] = 255
        self.map = png(Image.fromarray(cmap, "L"))
        self.sent = 0
        self.statuses: Counter[int] = Counter()
        self.rng = random.Random(16)

    def check(self, r: httpx.Response, expected: set[int], what: str) -> None:
        self.sent += 1
        self.statuses[r.status_code] += 1
        assert r.status_code in expected, (what, r.status_code, r.text[:300])
        if r.status_code >= 400:
            assert r.headers["content-type"].startswith("application/json"), (what, r.headers)
            msg = r.json()["error"]
            assert isinstance(msg, str) and msg and "\n" not in msg, (what, msg)
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
        if r.status_code == 200 and r.headers["content-type"] == "image/png":
            Image.open(io.BytesIO(r.content)).load()

    def post(self, path: str, expected: set[int], what: str, **kw: Any) -> None:
        self.check(self.client.post(path, **kw), expected, what)

    def seed(self) -> str:
        return str(self.rng.randrange(2**31))


def good_edit(s: Soak) -> None:
    s.post("/api/edit", {200}, "edit", files={"image": ("a.png", s.image), "map": ("m.png", s.map)},
           data={"prompt": s.rng.choice(["a red house", "", "snow"]), "steps": str(s.rng.randint(1, 4)), "seed": s.seed()})


def good_fan(s: Soak) -> None:
    s.post("/api/fan", {200}, "fan", files={"image": ("a.png", s.image)},
           data={"prompt": "x", "columns": "3", "steps": "3", "seed": s.seed()})


def good_auto_map(s: Soak) -> None:
    s.post("/api/auto-map", {200}, "auto-map", files={"image": ("a.png", s.image)},
           data={"source_prompt": "a", "target_prompt": "b", "num_maps": "2", "seed": s.seed()})


def good_diffedit(s: Soak) -> None:
    s.post("/api/diffedit", {200}, "diffedit", files={"image": ("a.png", s.image), "mask": ("m.png", s.map)},
           data={"source_prompt": "a", "target_prompt": "b", "steps": "2", "seed": s.seed()})


def health(s: Soak) -> None:
    s.check(s.client.get("/api/health"), {200}, "health")


def malformed(s: Soak) -> None:
    files = {"image": ("a.png", s.image), "map": ("m.png", s.map)}
    case = s.rng.randrange(10)
    if case == 0:
        s.post("/api/edit", {422}, "not an image", files={"image": ("a.png", b"GIF89a nope"), "map": ("m.png", s.map)},
               data={"prompt": "x"})
    elif case == 1:
        s.post("/api/edit", {422}, "truncated", files={"image": ("a.png", s.image[:100]), "map": ("m.png", s.map)},
               data={"prompt": "x"})
    elif case == 2:
        s.post("/api/edit", {422}, "missing map", files={"image": ("a.png", s.image)}, data={"prompt": "x"})
    elif case == 3:
        s.post("/api/edit", {422}, "bad steps", files=files, data={"prompt": "x", "steps": s.rng.choice(["0", "5", "x"])})
    elif case == 4:
        s.post("/api/edit", {422}, "bad polarity", files=files, data={"prompt": "x", "polarity": "sideways"})
    elif case == 5:
        s.post("/api/edit", {422}, "repeated", files=[*files.items(), ("prompt", (None, "a")), ("prompt", (None, "b"))])
    elif case == 6:
        s.post("/api/edit", {422}, "json body", json={"prompt": "x"})
    elif case == 7:  # cut short (no fields: 422) or without a boundary (unparsable: 400)
        boundary, status = s.rng.choice([("; boundary=xyz", 422), ("", 400)])
        s.post("/api/edit", {status}, "broken multipart", content=b"--xyz\r\nContent-Disposition: form-da",
               headers={"content-type": "multipart/form-data" + boundary})
    elif case == 8:
        s.check(s.client.request(s.rng.choice(["TRACE", "PUT", "DELETE", "PATCH"]), "/api/edit"), {405}, "method")
    else:
        s.check(s.client.get("/api/" + s.rng.choice(["nope", "edit/x", "health/"])), {404}, "unknown path")


def oversized(s: Soak) -> None:
    case = s.rng.randrange(3)
    if case == 0:  # one pixel row above the limit
        big = png(Image.new("RGB", (96, 97)))
        s.post("/api/edit", {413}, "pixels", files={"image": ("a.png", big), "map": ("m.png", png(Image.new("L", (96, 97))))},
               data={"prompt": "x"})
    elif case == 1:  # a 6000 x 6000 PNG of a few KB: refused from its header
        s.post("/api/fan", {413}, "bomb", files={"image": ("a.png", png(Image.new("L", (6000, 6000))))}, data={"prompt": "x"})
    else:  # a body announced far above the upload limit: refused before it is read
        s.sent += 1
        with socket.create_connection((HOST, int(s.base.rsplit(":", 1)[1])), timeout=REQUEST_TIMEOUT) as conn:
            conn.sendall(b"POST /api/edit HTTP/1.1\r\nHost: soak\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 999999999999\r\n\r\n")
            head = conn.recv(4096).split(b"\r\n", 1)[0]
        s.statuses[int(head.split()[1])] += 1
        assert head.startswith(b"HTTP/1.1 413"), head


def burst(s: Soak) -> None:
    """BURST_SIZE edits at once: each is done (200) or refused at once (503 + Retry-After)."""
    def one(i: int) -> httpx.Response:
        with httpx.Client(base_url=s.base, timeout=REQUEST_TIMEOUT) as c:
            return c.post("/api/edit", files={"image": ("a.png", s.image), "map": ("m.png", s.map)},
                          data={"prompt": "x", "steps": "4", "seed": str(i)})

    with ThreadPoolExecutor(BURST_SIZE) as pool:
        answers = list(pool.map(one, range(BURST_SIZE)))
    for r in answers:
        s.check(r, {200, 503}, "burst")
    assert any(r.status_code == 200 for r in answers)


SEQUENTIAL: list[tuple[Callable[[Soak], None], int]] = [
    (good_edit, 5), (good_fan, 2), (good_auto_map, 2), (good_diffedit, 2), (health, 2), (malformed, 6), (oversized, 2),
]


def test_soak_mixed_requests_leave_an_empty_queue_and_bounded_memory(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    base, proc = server
    s = Soak(base)
    for fn in (good_edit, good_fan, good_auto_map, good_diffedit, health):  # first-call allocations
        fn(s)
    baseline = rss_mb(proc.pid)
    s.sent, s.statuses = 0, Counter()

    kinds = [fn for fn, weight in SEQUENTIAL for _ in range(weight)]
    sequential = TOTAL - BURSTS * BURST_SIZE
    burst_at = set(s.rng.sample(range(sequential), BURSTS))
    start = time.monotonic()
    for i in range(sequential):
        if i in burst_at:
            burst(s)
        s.rng.choice(kinds)(s)
        assert time.monotonic() - start < SOAK_SECONDS, f"soak past {SOAK_SECONDS} s after {s.sent} requests"
    took = time.monotonic() - start

    assert s.sent == TOTAL
    assert proc.poll() is None, "the server died"
    h = httpx.get(f"{base}/api/health", timeout=10).json()
    assert h["status"] == "ok" and h["queue"] == {"running": 0, "waiting": 0, "capacity": 2}
    growth = rss_mb(proc.pid) - baseline
    print(f"\nsoak: {s.sent} requests in {took:.1f} s, statuses {dict(sorted(s.statuses.items()))}, "
          f"RSS {baseline:.0f} MB -> {baseline + growth:.0f} MB ({growth:+.1f} MB)")
    assert growth < RSS_GROWTH_LIMIT_MB, f"server RSS grew by {growth:.1f} MB over {TOTAL} requests"
    assert {200, 413, 422} <= set(s.statuses) and not any(code >= 500 and code != 503 for code in s.statuses)
