"""Screenshot of `dgnerf view` for the docs (docs/viewer.png): headless Chromium with the fake camera playing the
carphone clip, the webcam driving the head, an identity halfway between two people, an expression slider moved.

    python scripts/viewer_screenshot.py CHECKPOINT DATASET OUT.png [--video CLIP.y4m]

Needs what the browser tests need (tests/viewer_browser.py); without --video (or without MediaPipe) the
webcam panel stays closed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.viewer_browser import ViewServer, chrome, wait_for


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--video", help="a .y4m for Chromium's fake camera (then the webcam drives the head)")
    ap.add_argument("--seconds", type=float, default=6.0, help="how long the webcam drives before the picture")
    a = ap.parse_args()
    srv = ViewServer(a.checkpoint, "--data", a.data)
    d = chrome(fake_video=a.video, width=1400, height=960)
    try:
        d.get(srv.url)
        wait_for(d, "window.viewer && window.viewer.stats.fulls >= 1", 120)
        d.execute_script("""
            const set = (id, v) => { const el = document.getElementById(id); el.value = String(v);
                el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change')); };
            set('identity-t', 0.2); set('expression-0', 0.5); set('yaw', 20);""")
        if a.video and d.execute_script("return window.viewer.hello.live.available"):
            d.find_element("id", "webcam").click()
            wait_for(d, "window.viewer.stats.live.length >= 3", 60)
            time.sleep(a.seconds)
            d.execute_script("""const el = document.getElementById('live-quality'); el.value = 'full';
                el.dispatchEvent(new Event('change'));""")
            time.sleep(3)
        else:
            time.sleep(3)
        d.execute_script("window.scrollTo(0, 0)")
        d.save_screenshot(a.out)
        print(f"wrote {a.out}")
    finally:
        d.quit()
        srv.stop()


if __name__ == "__main__":
    main()
