"""Helpers of the viewer's browser tests: headless Chromium (Debian's chromium + chromium-driver) through
selenium, a `dgnerf view` server in a subprocess, and the fake-camera video (a y4m with the frame number
drawn into a corner, so the page can say which video frame each webcam frame was)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BITS = 8  # frame-number cells along the top-left edge
CELL = 16  # px of each cell in the 176x144 clip


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    try:
        import websockets  # noqa: F401
    except ImportError:
        return "websockets is not installed (a dependency of dgnerf view: pip install 'websockets>=13')"
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        return "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    return None


def chrome(fake_video: str | None = None, width: int = 1400, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    o = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}",
              "--autoplay-policy=no-user-gesture-required", "--disable-extensions", "--no-first-run"):
        o.add_argument(a)
    if fake_video:
        # the fake camera plays the file in a loop; the permission prompt is answered yes
        o.add_argument("--use-fake-device-for-media-stream")
        o.add_argument("--use-fake-ui-for-media-stream")
        o.add_argument(f"--use-file-for-fake-video-capture={fake_video}")
    o.binary_location = shutil.which("chromium")
    return webdriver.Chrome(options=o, service=Service(shutil.which("chromedriver")))


class ViewServer:
    """`python -m dgnerf view ARGS --port 0` in a subprocess; .url once it serves; .alive(); .stop()."""

    def __init__(self, *args: str, timeout: float = 180.0):
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "dgnerf", "view", *args, "--port", "0"], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.url = None
        found = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"dgnerf view: (http://\S+)", line)
                if m and self.url is None:
                    self.url = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(timeout) or self.url is None:
            self.stop()
            raise RuntimeError("dgnerf view did not start:\n" + "".join(self.lines[-30:]))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_for(driver, script: str, timeout: float = 60.0, every: float = 0.05):
    """Poll a JS expression until it is truthy -> its value."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = driver.execute_script("return " + script)
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for: {script}")


def view_pixels(driver) -> np.ndarray:
    """The image the page shows now, as [H, W, 3] uint8 (read back through a canvas)."""
    data = driver.execute_script("""
        const img = document.getElementById('view');
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
        return [c.width, c.height, Array.from(ctx.getImageData(0, 0, c.width, c.height).data)];""")
    w, h, px = data
    return np.asarray(px, np.uint8).reshape(h, w, 4)[..., :3]


# ------------------------------------------------------------------ the fake camera's video
def stamp(frame: np.ndarray, k: int) -> np.ndarray:
    """Frame number k in BITS black/white cells along the top edge (the clip's car ceiling, away from the face)."""
    f = frame.copy()
    for b in range(BITS):
        f[:CELL, b * CELL:(b + 1) * CELL] = 255 if (k >> b) & 1 else 0
    return f


def write_y4m(path: str, frames: list, fps: int) -> None:
    """RGB frames -> a 4:2:0 YUV4MPEG2 file (BT.601 full range: Chromium's fake camera reads this format)."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg XYSCSS=420JPEG\n".encode())
        for rgb in frames:
            x = rgb.astype(np.float32)
            r, g, b = x[..., 0], x[..., 1], x[..., 2]
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
            v = 0.5 * r - 0.418688 * g - 0.081312 * b + 128

            def half(c):
                return c.reshape(h // 2, 2, w // 2, 2).mean((1, 3))

            f.write(b"FRAME\n")
            f.writelines(np.clip(np.rint(plane), 0, 255).astype(np.uint8).tobytes() for plane in (y, half(u), half(v)))


READ_STAMP_JS = f"""
window.viewer.stamps = {{}};
window.viewer.hooks.cameraFrame = (ctx, id, canvas) => {{
  const w = canvas.width, h = canvas.height, sx = w / 176, sy = h / 144;
  let k = 0;
  for (let b = 0; b < {BITS}; b++) {{
    const p = ctx.getImageData(Math.floor((b * {CELL} + {CELL} / 2) * sx), Math.floor({CELL} / 2 * sy), 1, 1).data;
    if ((p[0] + p[1] + p[2]) / 3 > 128) k |= (1 << b);
  }}
  window.viewer.stamps[id] = k;
}};
"""
