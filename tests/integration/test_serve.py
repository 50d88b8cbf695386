"""The Ray Serve application end to end on 127.0.0.1: `avatar4d serve` in a subprocess (its own Ray),
the v1 API, every bad input answered with a 4xx and the service still answering, a bounded load
test (zero errors, latency percentiles, batching observed), a restart of the store deployment, and
the web page driven in headless Chromium through the DevTools protocol.

One service is started for the whole module (start-up dominates: six replicas import torch).
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests

from avatar4d.pipeline import encode_png
from tests.integration.conftest import REPO, assert_ray_gone
from tests.unit.pipeline.checkpoints import make_checkpoints, world_portraits

pytestmark = pytest.mark.integration
MAX_FRAMES, MAX_BODY, MAX_PIXELS = 32, 300_000, 250_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/v1/ready", timeout=5).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    checkpoints = make_checkpoints(root / "ckpt")
    port = _free_port()
    log = (root / "serve.log").open("w")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # no token on this test cluster, so the restart test can join it as a second driver to kill a replica
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen([sys.executable, "-m", "avatar4d.cli", "serve", "--checkpoints", str(checkpoints),
                             "--port", str(port), "--store", str(root / "store"), "--num-cpus", "2",
                             "--max-frames", str(MAX_FRAMES), "--max-body-bytes", str(MAX_BODY),
                             "--max-pixels", str(MAX_PIXELS)], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: proc.poll() is not None or _ready(url), 300, "the service to be ready")
        assert proc.poll() is None, (root / "serve.log").read_text()[-3000:]
        gcs = _wait(lambda: re.search(r"Ray at (\S+);", (root / "serve.log").read_text()), 30, "the Ray address")
        yield {"url": url, "root": root, "gcs": gcs.group(1)}
    finally:
        proc.send_signal(signal.SIGINT)  # the CLI shuts Serve and its Ray down
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        assert_ray_gone(proc.pid)


def _portrait_png(index: int = 0, domain: str = "pixar") -> bytes:
    return encode_png(world_portraits(index + 1, domain=domain, seed=40 + index)[0][index])


def _create(url: str, png: bytes, seed: int = 0) -> requests.Response:
    return requests.post(f"{url}/v1/avatars", files={"portrait": ("p.png", png, "image/png")},
                         data={"seed": str(seed)}, timeout=120)


@pytest.fixture(scope="module")
def avatar_id(service):
    response = _create(service["url"], _portrait_png())
    assert response.status_code == 201, response.text
    return response.json()["avatar_id"]


def _png_frames(response: requests.Response) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(f.split(",", 1)[1])))) for f in response.json()["frames"]]


def test_api_create_render_and_openapi(service, avatar_id):
    url = service["url"]
    assert requests.get(f"{url}/v1/health").json() == {"status": "ok"}
    paths = requests.get(f"{url}/openapi.json").json()["paths"]
    assert {"/v1/avatars", "/v1/avatars/{avatar_id}/render", "/v1/avatars/{avatar_id}/turntable"} <= set(paths)
    body = {"image_base64": "data:image/png;base64," + base64.b64encode(_portrait_png(1)).decode(), "seed": 3}
    created = requests.post(f"{url}/v1/avatars", json=body, timeout=120)
    assert created.status_code == 201 and created.json()["sampling"]["seed"] == 3
    info = requests.get(f"{url}/v1/avatars/{avatar_id}").json()
    assert info["triplane_shape"] == [4, 8, 64, 64] and set(info["checkpoints"]) == {"dit", "vae", "encoders",
                                                                                       "generator"}
    rendered = requests.post(f"{url}/v1/avatars/{avatar_id}/render", json={
        "driving": {"preset": "talk", "frames": 6}, "cameras": [{"yaw": 20, "pitch": 5}]})
    frames = _png_frames(rendered)
    assert len(frames) == 6 and frames[0].shape == (64, 64, 3) and np.std(frames[0]) > 1
    coefficients = requests.post(f"{url}/v1/avatars/{avatar_id}/render", json={
        "driving": {"expression": [[0.5] + [0.0] * 9] * 3}, "format": "png"})
    assert coefficients.headers["content-type"] == "image/png"
    video = requests.get(f"{url}/v1/avatars/{avatar_id}/turntable", params={"frames": 8})
    assert video.headers["content-type"] == "video/mp4" and video.content[4:8] == b"ftyp"
    page = requests.get(url + "/")
    assert page.status_code == 200 and "avatar4d" in page.text
    assert requests.get(f"{url}/v1/samples").json()["samples"] == ["greek_statue", "pixar", "zombie"]


def _zero_size_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_bad_inputs_answer_4xx_and_the_service_keeps_answering(service, avatar_id):
    url = service["url"]
    render = f"{url}/v1/avatars/{avatar_id}/render"
    png = _portrait_png()
    big = encode_png(np.full((600, 600, 3), 90, np.uint8))  # 360,000 pixels in a few kB
    assert len(big) < MAX_BODY
    json_headers = {"content-type": "application/json"}
    cases = {
        "non-image bytes": lambda: _create(url, b"this is not an image at all"),
        "truncated PNG": lambda: _create(url, png[: len(png) // 2]),
        "0x0 image": lambda: _create(url, _zero_size_png()),
        "1x1 image": lambda: _create(url, encode_png(np.zeros((1, 1, 3), np.uint8))),
        "over the pixel limit": lambda: _create(url, big),
        "wrong content type": lambda: requests.post(f"{url}/v1/avatars", data=png, headers={"content-type":
                                                                                             "image/png"}),
        "malformed JSON": lambda: requests.post(render, data=b'{"driving": ', headers=json_headers),
        "unknown avatar id": lambda: requests.post(f"{url}/v1/avatars/{'f' * 32}/render", json={}),
        "path-like avatar id": lambda: requests.get(f"{url}/v1/avatars/..%2F..%2Fetc"),
        "more frames than the limit": lambda: requests.post(render, json={"driving": {"frames": MAX_FRAMES + 1}}),
        "NaN camera": lambda: requests.post(render, data=b'{"cameras": [{"yaw": NaN}]}', headers=json_headers),
        "infinite camera": lambda: requests.post(render, data=b'{"cameras": [{"yaw": 1e999}]}', headers=json_headers),
        "infinite coefficient": lambda: requests.post(render, data=b'{"driving": {"expression": [[1e999]]}}',
                                                      headers=json_headers),
        "wrong coefficient count": lambda: requests.post(render, json={"driving": {"expression": [[0.1, 0.2]]}}),
        "body over the size limit": lambda: _create(url, b"\0" * (MAX_BODY + 1)),
        "bad base64": lambda: requests.post(f"{url}/v1/avatars", json={"image_base64": "%%%"}),
    }
    for name, send in cases.items():
        response = send()
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        error = response.json()
        assert isinstance(error.get("error"), str) and "Traceback" not in error["error"] and "ray::" not in \
            error["error"], (name, error)
        ok = requests.post(render, json={"driving": {"preset": "smile", "frames": 2}})
        assert ok.status_code == 200, (name, ok.text)


def test_load_many_clients_zero_errors_and_batching(service, avatar_id):
    url, clients, per_client = service["url"], 8, 4
    pngs = [_portrait_png(k % 3, domain=("pixar", "zombie", "greek_statue")[k % 3]) for k in range(clients)]

    def client(index: int) -> list[tuple[str, float, int]]:
        out = []
        for step in range(per_client):
            started = time.perf_counter()
            if step == 0:
                response = _create(url, pngs[index], seed=index)
            else:
                response = requests.post(f"{url}/v1/avatars/{avatar_id}/render", timeout=120, json={
                    "driving": {"preset": "talk", "frames": 8}, "cameras": [{"yaw": 5.0 * index, "pitch": 0}]})
            out.append(("create" if step == 0 else "render", time.perf_counter() - started, response.status_code))
        return out

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [r for part in pool.map(client, range(clients)) for r in part]
    wall = time.perf_counter() - started
    errors = [r for r in results if r[2] not in (200, 201)]
    assert not errors, errors
    for kind in ("create", "render"):
        latency = np.array([r[1] for r in results if r[0] == kind])
        print(f"\nload {kind}: {len(latency)} requests, p50 {np.percentile(latency, 50) * 1e3:.0f} ms, "
              f"p99 {np.percentile(latency, 99) * 1e3:.0f} ms")
    print(f"load: {len(results)} requests from {clients} clients in {wall:.1f} s = {len(results) / wall:.2f} req/s")
    stats = requests.get(f"{url}/v1/stats").json()
    print("batches:", json.dumps({k: stats[k]["histogram"] for k in ("generator", "renderer")}))
    assert stats["renderer"]["max_batch_size"] > 1 or stats["generator"]["max_batch_size"] > 1, stats


def test_store_restart_keeps_avatars(service, avatar_id):
    import ray

    ray.init(address=service["gcs"], namespace="serve", log_to_driver=False)
    try:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "AvatarStore" in a["name"]]
        assert names, ray.util.list_named_actors(all_namespaces=True)
        for name in names:
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    finally:
        ray.shutdown()

    def renders() -> bool:
        try:
            response = requests.post(f"{service['url']}/v1/avatars/{avatar_id}/render", timeout=30,
                                     json={"driving": {"preset": "blink", "frames": 2}})
        except requests.RequestException:
            return False
        return response.status_code == 200

    _wait(renders, 120, "the restarted store to serve the old avatar", interval=0.5)
    store = requests.get(f"{service['url']}/v1/stats").json()["store"]
    assert store["in_memory"] == 1 and store["stored"] >= 2  # read back from the folder, not from memory


CANVAS_DRAWN = """(() => { const c = document.getElementById('view');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0; for (let i = 0; i < d.length; i += 4) { if (d[i] + d[i + 1] + d[i + 2] > 30) lit++; }
  return lit > 0.05 * c.width * c.height; })()"""


class Chromium:
    """Debian's headless chromium driven over the DevTools protocol (websocket JSON-RPC), its own profile."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile

    def __enter__(self) -> Chromium:
        import shutil

        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.fail("Debian's chromium is needed for the web page test (apt-get install chromium)")
        self.proc = subprocess.Popen([binary, "--headless=new", "--no-sandbox", "--disable-gpu",
                                      "--remote-debugging-port=0", "--remote-allow-origins=*",
                                      f"--user-data-dir={self.profile}", "--window-size=1100,800", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = self.profile / "DevToolsActivePort"
        port = _wait(lambda: active.is_file() and active.read_text().split("\n")[0].strip(), 60, "chromium")
        pages = _wait(lambda: [t for t in requests.get(f"http://127.0.0.1:{port}/json/list").json()
                               if t["type"] == "page"], 30, "a page target")
        from websockets.sync.client import connect

        self.socket = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024)
        self.next_id = 0
        self.send("Page.enable")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.socket.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def send(self, method: str, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(result["exceptionDetails"])
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        _wait(lambda: self.evaluate("document.readyState") == "complete", 30, "the page to load")

    def set_file(self, selector: str, path: Path) -> None:
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def box(self, selector: str) -> dict:
        return self.evaluate(f"JSON.parse(JSON.stringify(document.querySelector('{selector}')"
                             ".getBoundingClientRect()))")

    def screenshot_of(self, selector: str) -> np.ndarray:
        from PIL import Image

        box = self.box(selector)
        data = self.send("Page.captureScreenshot", format="png", clip={**{k: box[k] for k in ("x", "y", "width",
                                                                                               "height")}, "scale": 1})
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data["data"]))).convert("RGB")).astype(np.float64)

    def drag(self, x: float, y: float, *, dx: float, dy: float) -> None:
        self.send("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
        for step in range(1, 5):
            self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x + dx * step / 4, y=y + dy * step / 4,
                      button="left", buttons=1)
        self.send("Input.dispatchMouseEvent", type="mouseReleased", x=x + dx, y=y + dy, button="left", clickCount=1)


def test_web_page_in_headless_chromium(service, tmp_path):
    portrait = tmp_path / "portrait.png"
    portrait.write_bytes(_portrait_png(2, domain="zombie"))
    with Chromium(tmp_path / "profile") as browser:
        browser.navigate(service["url"] + "/")
        _wait(lambda: browser.evaluate("document.querySelectorAll('#samples option').length") == 4, 30,
              "the sample list")
        browser.set_file("#portrait", portrait)
        browser.evaluate("document.getElementById('create').click()")
        _wait(lambda: browser.evaluate("document.getElementById('status').dataset.state") in ("playing", "error"),
              120, "frames on the page")
        assert browser.evaluate("document.getElementById('status').dataset.state") == "playing", \
            browser.evaluate("document.getElementById('status').textContent")
        assert browser.evaluate("document.getElementById('view').dataset.frames") == "24"
        _wait(lambda: browser.evaluate(CANVAS_DRAWN), 30, "the player to draw a frame")
        shot = browser.screenshot_of("#view")
        assert shot.std() > 5 and (shot.max(axis=2) > 10).mean() > 0.05, (shot.std(), shot.mean())
        box = browser.box("#view")
        browser.drag(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, dx=-80, dy=0)
        _wait(lambda: browser.evaluate("document.getElementById('view').dataset.renders") == "2", 60,
              "a render for the dragged camera")
        assert "yaw 20°" in browser.evaluate("document.getElementById('camera').textContent")
