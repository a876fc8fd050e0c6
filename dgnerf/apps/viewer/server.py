"""The viewer's web server: one port serves the page (static files from this package) and a WebSocket
(/ws) that carries the page's state up and rendered frames down (docs/viewer.md).

Why the `websockets` library: one small pure-Python package with no dependencies (installs offline from one
wheel), asyncio, HTTP for the page and WebSocket on the same port; the page is plain HTML + JS with no build
step, so a browser test drives it with ordinary element ids.

Scheduling (per page): the page sends its whole state on every change; the server keeps only the newest and
renders it when the engine is free, so a fast drag never queues up stale frames. A state sent while dragging
gets a preview frame (smaller feature map); a state with drag=false, or no new state for IDLE_FULL_S after a
preview, gets the full frame. Renders from every page run one at a time on one worker thread (torch's own
threads do the parallel work). Webcam frames: the newest one wins too; the page sends the next only after the
answer to the last (one in flight), which keeps the latency at one track + one render.

Messages from the page are checked field by field (ViewerSession.parse_state); a bad one is answered with
{"type": "error"} and the connection stays open. Nothing from the page is ever a file path.

Binary messages both ways: 4-byte big-endian header length, a JSON header, then the payload (JPEG / PNG /
code file bytes).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import io
import ipaddress
import json
import mimetypes
import struct
import threading
import time
import traceback
from importlib import resources

import numpy as np
import torch
from PIL import Image

from dgnerf.apps.viewer.live import LiveTracker
from dgnerf.apps.viewer.session import ViewerInputError, ViewerSession, encode_jpeg
from dgnerf.errors import DgnerfError

try:  # a dependency since the viewer; an environment made before it keeps every other command
    from websockets.asyncio.server import serve
    from websockets.datastructures import Headers
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Response
except ImportError as e:  # pragma: no cover - exercised by hand
    serve = Headers = Response = None
    ConnectionClosed = OSError
    WEBSOCKETS_MISSING = f"{type(e).__name__}: {e}"
else:
    WEBSOCKETS_MISSING = None

IDLE_FULL_S = 0.25  # a drag that pauses this long gets its full frame
LIVE_IDLE_S = 1.0  # with the webcam on, the full frame waits until its frames stop this long
MAX_TEXT = 64 * 1024
MAX_MESSAGE = 2 * 1024 * 1024  # a webcam JPEG or a code file
MAX_CAMERA_SIDE = 1280
STATIC = ("index.html", "viewer.js", "viewer.css")
TEXT_TYPES = ("state", "save_png", "save_codes", "neutral", "ping")
# The page needs nothing from elsewhere: no remote scripts, styles or connections.
CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
       "connect-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pack(header: dict, payload: bytes = b"") -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(h)) + h + payload


def unpack(data: bytes) -> tuple[dict, bytes]:
    if len(data) < 4:
        raise ViewerInputError("binary message: shorter than its 4-byte header length")
    n = struct.unpack(">I", data[:4])[0]
    if n > MAX_TEXT or 4 + n > len(data):
        raise ViewerInputError("binary message: header length out of range")
    try:
        header = json.loads(data[4:4 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ViewerInputError("binary message: the header is not JSON") from None
    if not isinstance(header, dict):
        raise ViewerInputError("binary message: the header is not a JSON object")
    return header, data[4 + n:]


def decode_camera_jpeg(data: bytes) -> np.ndarray:
    """A webcam frame from the page -> RGB uint8; the size is checked before the pixels are decoded."""
    try:
        im = Image.open(io.BytesIO(data))
        if im.format not in ("JPEG", "PNG"):
            raise ViewerInputError(f"camera: expected a JPEG frame, got {im.format}")
        w, h = im.size
        if not (16 <= w <= MAX_CAMERA_SIDE and 16 <= h <= MAX_CAMERA_SIDE):
            raise ViewerInputError(f"camera: frame of {w}x{h}; expected 16..{MAX_CAMERA_SIDE} pixels a side")
        return np.asarray(im.convert("RGB"))
    except ViewerInputError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the bytes are, the page gets an error
        raise ViewerInputError(f"camera: not a decodable image ({type(e).__name__})") from None


class ViewerServer:
    """Serves a ViewerSession. live: (available, reason, basis path or None) of webcam driving."""

    def __init__(self, session: ViewerSession, host: str = "127.0.0.1", port: int = 8008, live=(False, "", None),
                 log=print, tracker_factory=None):
        if WEBSOCKETS_MISSING:
            raise DgnerfError(f"dgnerf view needs the websockets package ({WEBSOCKETS_MISSING}): pip install 'websockets>=13'")
        self.session = session
        self.host, self.port = host, port
        self.live_ok, self.live_reason, self.live_basis = live
        self.log = log
        self.tracker_factory = tracker_factory or (lambda: LiveTracker(self.live_basis,
                                                                       expression_dim=session.model.cfg.expression_dim))
        # one engine thread for every page: renders are serialised, torch parallelises inside each
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dgnerf-view-render")
        self.static = {name: resources.files("dgnerf.apps.viewer").joinpath("static", name).read_bytes() for name in STATIC}
        self.bound_port = None
        self._server = None
        self._loop = None
        self._stop = None

    def warmup(self):
        """session.warmup() on the engine thread itself: the renders' first-call costs (oneDNN primitive
        caches, thread-local scratch) belong to the thread that will render."""
        self.pool.submit(self.session.warmup).result()

    # ------------------------------------------------------------------ HTTP: the page, and who may connect
    def _allowed_host(self, host_header: str | None) -> bool:
        if not is_loopback(self.host):
            return True  # --allow-remote: reachable by name or address, which cannot be listed here
        if not host_header:
            return False
        names = {f"127.0.0.1:{self.bound_port}", f"localhost:{self.bound_port}", f"[::1]:{self.bound_port}"}
        return host_header.lower() in names

    def process_request(self, connection, request):
        host = request.headers.get("Host")
        path = request.path.split("?", 1)[0]
        if not self._allowed_host(host):
            # DNS rebinding: a page of another site resolved to 127.0.0.1 still names its own host
            return self._response(403, b"forbidden host\n", "text/plain")
        if path == "/ws":
            origin = request.headers.get("Origin")
            if origin != f"http://{host}":
                # browsers let any site open a WebSocket to localhost: only this page's own origin may
                return self._response(403, b"forbidden origin\n", "text/plain")
            return None
        name = "index.html" if path == "/" else path.lstrip("/")
        if name not in self.static:
            return self._response(404, b"not found\n", "text/plain")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        return self._response(200, self.static[name], ctype)

    @staticmethod
    def _response(status: int, body: bytes, ctype: str) -> Response:
        reason = {200: "OK", 403: "Forbidden", 404: "Not Found"}[status]
        headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"),
                           ("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", CSP),
                           ("Referrer-Policy", "no-referrer")])
        return Response(status, reason, headers, body)

    # ------------------------------------------------------------------ WebSocket
    async def handler(self, ws):
        page = _Page(self, ws)
        try:
            await page.run()
        finally:
            page.close()

    async def serve_forever(self, ready: threading.Event | None = None):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self.handler, self.host, self.port, process_request=self.process_request,
                         max_size=MAX_MESSAGE, compression=None, ping_interval=20, ping_timeout=60,
                         server_header=None) as server:
            self._server = server
            self.bound_port = server.sockets[0].getsockname()[1]
            if ready is not None:
                ready.set()
            await self._stop.wait()
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.bound_port}/"

    def start_in_thread(self, timeout: float = 30.0) -> str:
        """Serve from a daemon thread (tests, notebooks) -> the page's URL; stop() ends it."""
        ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self.serve_forever(ready)), daemon=True,
                                        name="dgnerf-view-server")
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("the viewer server did not start")
        return self.url

    def stop(self):
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if getattr(self, "_thread", None) is not None:
            self._thread.join(10)


class _Page:
    """One connected page: its newest state, its webcam tracker, and the loop that answers it."""

    def __init__(self, server: ViewerServer, ws):
        self.server, self.ws, self.session = server, ws, server.session
        self.state = self.session.default_state()
        self.dirty = False  # nothing is rendered before the page sends its state
        self.last_quality = None
        self.camera = None  # (header, rgb) newest webcam frame not yet answered
        self.requests = []  # "save_png" / "save_codes"
        self.wake = asyncio.Event()
        self.tracker = None
        self.tracker_error = None
        self.last_tracked = None  # (pose, expression) of the newest tracked webcam frame
        self.last_camera = 0.0  # when the newest webcam frame arrived (perf_counter)
        self.camera_ms = None  # moving average of a webcam frame's engine time
        self.camera_done = None  # when the engine finished the last webcam frame
        self.rendered = 0

    def close(self):
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            try:
                self.server.pool.submit(tracker.close)  # on the thread that made it
            except RuntimeError:  # the server is shutting down: the process ends the tracker
                pass

    async def run(self):
        s = self.server
        hello = self.session.hello()
        hello["live"] = {"available": s.live_ok, "reason": s.live_reason,
                         "expression": s.live_basis is not None}
        await self.ws.send(json.dumps(hello))
        renderer = asyncio.create_task(self.render_loop())
        try:
            async for message in self.ws:
                try:
                    self.receive(message)
                except ViewerInputError as e:
                    await self.send_error(str(e))
                except Exception as e:  # noqa: BLE001 - whatever a message does, the page gets an answer
                    self.server.log("dgnerf view: error on a message:\n" + traceback.format_exc())
                    await self.send_error(f"server error on this message: {type(e).__name__}")
                self.wake.set()
        except ConnectionClosed:
            pass
        finally:
            renderer.cancel()
            try:
                await renderer
            except (asyncio.CancelledError, ConnectionClosed):
                pass

    async def send_error(self, message: str):
        try:
            await self.ws.send(json.dumps({"type": "error", "message": message[:500]}))
        except ConnectionClosed:
            pass

    # ------------------------------------------------------------------ what the page sends
    def receive(self, message):
        if isinstance(message, str):
            if len(message) > MAX_TEXT:
                raise ViewerInputError(f"message: {len(message)} characters; at most {MAX_TEXT}")
            try:
                msg = json.loads(message)
            except (ValueError, RecursionError):
                raise ViewerInputError("message: not JSON (or nested too deeply)") from None
            if not isinstance(msg, dict) or msg.get("type") not in TEXT_TYPES:
                got = msg.get("type") if isinstance(msg, dict) else type(msg).__name__
                raise ViewerInputError(f"message.type: expected one of {list(TEXT_TYPES)}, got {str(got)[:40]!r}")
            kind = msg["type"]
            if kind == "state":
                self.state = self.session.parse_state(msg)
                self.dirty = True
            elif kind in ("save_png", "save_codes"):
                if len(self.requests) < 4:
                    self.requests.append(kind)
            elif kind == "neutral":
                action = msg.get("action")
                if action not in ("set", "reset"):
                    raise ViewerInputError(f"neutral.action: expected 'set' or 'reset', got {str(action)[:40]!r}")
                if len(self.requests) < 4:
                    self.requests.append(f"neutral_{action}")
            return
        header, payload = unpack(message)
        kind = header.get("type")
        if kind == "camera":
            if not self.server.live_ok:
                raise ViewerInputError(f"camera: live driving is off here ({self.server.live_reason})")
            cid, t = header.get("id"), header.get("t")
            if isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid < 2**53:
                raise ViewerInputError("camera.id: expected a non-negative integer")
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t):
                raise ViewerInputError("camera.t: expected a finite number (the page's clock)")
            rgb = decode_camera_jpeg(payload)
            if self.camera is not None:  # not started yet: the newer frame replaces it, the page hears so
                old = self.camera[0]
                asyncio.get_running_loop().create_task(self.ws.send(json.dumps(
                    {"type": "live", "id": old["id"], "t": old["t"], "ok": False, "reason": "dropped"})))
            self.camera = ({"id": cid, "t": t}, rgb, time.perf_counter())
            self.last_camera = time.perf_counter()
        elif kind == "upload":
            index = self.session.add_code(header.get("name"), payload)
            asyncio.get_running_loop().create_task(self.ws.send(json.dumps(
                {"type": "persons", "persons": self.session.hello()["persons"], "added": index})))
        else:
            raise ViewerInputError(f"binary message type: expected 'camera' or 'upload', got {str(kind)[:40]!r}")

    # ------------------------------------------------------------------ answering
    def next_job(self, idle: bool):
        if self.requests:
            return self.requests.pop(0)
        if self.camera is not None:
            return "camera"
        if self.dirty:
            return "state"
        if idle and self.last_quality == "preview":
            if self.state.live and time.perf_counter() - self.last_camera < LIVE_IDLE_S:
                return None  # webcam frames keep coming: a full frame now would only delay the next one
            return "idle"
        return None

    async def render_loop(self):
        loop = asyncio.get_running_loop()
        idle = False
        while True:
            job = self.next_job(idle)
            idle = False
            if job is None:
                self.wake.clear()
                timeout = IDLE_FULL_S if self.last_quality == "preview" else None
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout)
                except asyncio.TimeoutError:
                    idle = True
                continue
            # taken here, on the event loop's thread, so a state that arrives during the render marks dirty anew
            st, camera = self.state, None
            if job == "camera":
                camera, self.camera = self.camera, None
                now = time.perf_counter()
                arrived = camera[2]
                # how long this frame waited for the engine, and how long the engine waited for it (it arrived
                # after the last webcam frame was done): the page moves its grab earlier or later by these
                camera[0]["wait_ms"] = round((now - arrived) * 1e3, 1)
                camera[0]["idle_ms"] = round(max(0.0, arrived - self.camera_done) * 1e3, 1) if self.camera_done else 0.0
                # the page times its next grab by this, so the next frame arrives as this one is done
                await self.ws.send(json.dumps({"type": "live_started", "id": camera[0]["id"],
                                               "expect_ms": round(self.camera_ms or 0.0, 1)}))
            if job in ("state", "idle", "camera"):
                self.dirty = False
            t0 = time.perf_counter()
            try:
                out = await loop.run_in_executor(self.server.pool, self.work, job, st, camera)
            except ViewerInputError as e:
                await self.send_error(str(e))
                continue
            except Exception as e:  # noqa: BLE001 - the server stays up; the page and the log get the reason
                self.server.log("dgnerf view: error while rendering:\n" + traceback.format_exc())
                await self.send_error(f"server error while rendering: {type(e).__name__}: {e}")
                continue
            if job == "camera":  # moving average of a webcam frame's time on the engine (track + render + JPEG)
                self.camera_done = time.perf_counter()
                ms = (self.camera_done - t0) * 1e3
                self.camera_ms = ms if self.camera_ms is None else 0.7 * self.camera_ms + 0.3 * ms
            for m in out:
                await self.ws.send(m)

    def work(self, job: str, st, camera) -> list:
        """Runs on the engine thread. -> the messages to send."""
        if job == "save_png":
            return [pack({"type": "png"}, self.session.png_bytes(st))]
        if job == "save_codes":
            return [pack({"type": "codes"}, self.session.code_file_bytes(st))]
        if job.startswith("neutral_"):
            ok = False
            if self.tracker is not None:
                ok = self.tracker.set_neutral() if job == "neutral_set" else (self.tracker.reset_neutral() or True)
            return [json.dumps({"type": "neutral", "ok": ok, "action": job[len("neutral_"):]})]
        if job == "camera":
            return self.work_camera(st, camera)
        quality = "preview" if (job == "state" and st.drag) else "full"
        if st.live and self.last_tracked is not None:
            # live driving on: a change of identity, distance or options re-renders the last tracked face
            pose, expression = self.last_tracked
            return [self.frame(st, quality, pose=pose, expression=expression)]
        return [self.frame(st, quality)]

    def frame(self, st, quality, pose=None, expression=None, extra=None) -> bytes:
        t0 = time.perf_counter()
        img, info = self.session.render(st, quality, pose=pose, live_expression=expression)
        t1 = time.perf_counter()
        jpeg = encode_jpeg(img, 85 if quality == "preview" else 92)
        t2 = time.perf_counter()
        info["timings"]["encode"] = round((t2 - t1) * 1e3, 2)
        info.update({"type": "frame", "render_ms": round((t1 - t0) * 1e3, 2), "total_ms": round((t2 - t0) * 1e3, 2),
                     "n": self.rendered})
        if extra:
            info.update(extra)
        self.rendered += 1
        self.last_quality = quality
        return pack(info, jpeg)

    def work_camera(self, st, camera) -> list:
        header, rgb, _ = camera
        if self.tracker is None and self.tracker_error is None:
            try:
                self.tracker = self.server.tracker_factory()
            except Exception as e:  # noqa: BLE001 - reported in the page
                self.tracker_error = f"{type(e).__name__}: {e}"
        if self.tracker is None:
            raise ViewerInputError(f"live driving could not start: {self.tracker_error}")
        tracked, why = self.tracker(rgb)
        live = {"id": header["id"], "t": header["t"], "wait_ms": header["wait_ms"], "idle_ms": header["idle_ms"]}
        if tracked is None:
            return [json.dumps({"type": "live", **live, "ok": False, "reason": why})]
        live.update({"ok": True, "tracked": [round(tracked.yaw, 3), round(tracked.pitch, 3), round(tracked.roll, 3)],
                     "track_ms": round(tracked.track_ms, 2), "reprojection_px": round(tracked.reprojection_px, 3)})
        pose = (tracked.yaw, max(-89.0, min(89.0, tracked.pitch)), tracked.roll)
        expression = None if tracked.expression is None else torch.from_numpy(tracked.expression)
        self.last_tracked = (pose, expression)
        return [self.frame(st, st.live_quality, pose=pose, expression=expression, extra={"live": live})]


__all__ = ["IDLE_FULL_S", "ViewerServer", "is_loopback", "pack", "unpack"]
