"""`dgnerf view` in a real browser: headless Chromium (Debian's chromium + chromium-driver) through selenium.

- the page shows a frame, a slider changes the image, bad messages give an error in the page and the server
  stays up;
- speed with a paper-config checkpoint (32x32 features, 256x256 images): preview FPS while the mouse drags
  the view, and the time from releasing it to the full frame;
- live driving with Chromium's fake camera playing the carphone clip (frame numbers stamped in a corner):
  rendered FPS, camera-frame-to-render latency, and the correlation of the rendered yaw with the clip's
  tracked yaw (needs MediaPipe, the face geometry and the carphone assets: docs/preprocess.md).

Skipped cleanly where Chromium, chromedriver or selenium are missing (.ci/run installs them). The measured
numbers are written to $DGNERF_VIEWER_RECORD (a JSON file) when it is set; docs/viewer.md has the record.
The speed targets are asserted with DGNERF_VIEWER_TARGETS=1 (a quiet machine); by default only at a third
of them, so a CI machine shared with other jobs does not fail on load.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from tests.viewer_browser import (
    READ_STAMP_JS,
    ViewServer,
    browser_missing,
    chrome,
    stamp,
    view_pixels,
    wait_for,
    write_y4m,
)

MISSING = browser_missing()
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=str(MISSING)), pytest.mark.slow]
STRICT = os.environ.get("DGNERF_VIEWER_TARGETS") == "1"
SLACK = 1.0 if STRICT else 3.0  # targets / SLACK are asserted unless STRICT


def record(key: str, values: dict):
    path = os.environ.get("DGNERF_VIEWER_RECORD")
    print(f"\nviewer {key}: {json.dumps(values)}")
    if not path:
        return
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data[key] = values
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)


@pytest.fixture(scope="module")
def paper_checkpoint(tmp_path_factory):
    from dgnerf.model.checkpoint import init_checkpoint

    return init_checkpoint(str(tmp_path_factory.mktemp("view") / "paper.safetensors"))


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    from dgnerf.data.synthetic import build_synthetic_dataset

    out = tmp_path_factory.mktemp("view") / "heads"
    build_synthetic_dataset(str(out), size="tiny", seed=0)
    return str(out)


@pytest.fixture(scope="module")
def server(paper_checkpoint, heads):
    s = ViewServer(paper_checkpoint, "--data", heads, "--no-live")
    yield s
    s.stop()


@pytest.fixture()
def page(server):
    d = chrome()
    try:
        d.get(server.url)
        wait_for(d, "window.viewer && window.viewer.stats.shown >= 1 && window.viewer.stats.fulls >= 1", 120)
        yield d
    finally:
        d.quit()


def settle(d, timeout=30.0):
    """Wait until the page shows the full frame of its newest state (nothing in flight)."""
    n0 = d.execute_script("return window.viewer.stats.frames")
    time.sleep(0.6)
    wait_for(d, "window.viewer.stats.last && window.viewer.stats.last.quality === 'full' && "
                "window.viewer.stats.shown === window.viewer.stats.frames", timeout)
    return n0


def set_range(d, el_id: str, value: float):
    """Move a range input as the user's last step of a drag does: input events, then change."""
    d.execute_script("""const el = document.getElementById(arguments[0]);
        el.value = String(arguments[1]); el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change'));""",
                     el_id, value)


def test_page_slider_changes_image_and_bad_input_is_an_error(page, server):
    d = page
    settle(d)
    before = view_pixels(d).astype(np.int16)
    frames = d.execute_script("return window.viewer.stats.frames")
    # a real drag on the yaw slider's thumb
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    slider = d.find_element(By.ID, "yaw")
    ActionChains(d).click_and_hold(slider).move_by_offset(120, 0).release().perform()
    wait_for(d, f"window.viewer.stats.frames > {frames}")
    settle(d)
    yaw = d.execute_script("return window.viewer.state.camera.yaw")
    assert yaw > 10, yaw
    after = view_pixels(d).astype(np.int16)
    assert before.shape == after.shape == (256, 256, 3)
    change = float(np.abs(after - before).mean())
    assert change > 0.5, f"the image did not change with the yaw slider (mean |diff| {change:.3f})"
    # an expression slider and the identity slider re-render too
    for el in ("expression-0", "identity-t"):
        n = d.execute_script("return window.viewer.stats.frames")
        set_range(d, el, 0.8)
        wait_for(d, f"window.viewer.stats.frames > {n}")
    settle(d)

    # bad messages, straight into the page's socket: each is an error in the page, the server stays up
    bad = [
        '{"type": "state", "camera": {"yaw": 1e309}}',
        'not json',
        '{"type": "launch_missiles"}',
        '[1, 2, 3]',
        json.dumps({"type": "neutral", "action": "rm -rf"}),
    ]
    state = d.execute_script("return window.viewer.state")
    for path, value in ((("camera", "yaw"), "NaN"), (("camera", "distance"), -1), (("identity", "a"), 999),
                        (("options", "precision"), "fp64"), (("options", "skip"), True), (("expression",), [1])):
        s = json.loads(json.dumps(state))
        obj = s
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
        bad.append(json.dumps(s))
    errors0 = len(d.execute_script("return window.viewer.stats.errors"))
    # the page keeps its socket in a closure: a second socket of the same origin sends them, as the page would
    d.execute_script("""
        window.__errors = [];
        const s = new WebSocket(`ws://${location.host}/ws`);
        window.__bad = s;
        s.onmessage = (ev) => { if (typeof ev.data === 'string') { const m = JSON.parse(ev.data);
            if (m.type === 'error') window.__errors.push(m.message); } };
        s.onopen = () => { for (const m of arguments[0]) s.send(m); s.send(new Uint8Array([0, 0, 0, 200, 1, 2])); };
    """, bad)
    errs = wait_for(d, f"window.__errors.length >= {len(bad) + 1} && window.__errors")
    assert any("camera.yaw" in e for e in errs), errs
    assert any("identity.a" in e for e in errs), errs
    assert any("options.precision" in e for e in errs), errs
    assert any("binary message" in e for e in errs), errs
    assert server.alive(), server.log()
    # and the page itself shows an error for a bad value sent through its own controls
    d.execute_script("""const el = document.getElementById('precision'); el.append(new Option('fp64', 'fp64'));
        el.value = 'fp64'; el.dispatchEvent(new Event('change'));""")
    wait_for(d, f"window.viewer.stats.errors.length > {errors0}")
    assert "options.precision" in d.find_element(By.ID, "error").text
    # still serving: a good change renders
    n = d.execute_script("return window.viewer.stats.frames")
    d.execute_script("""const el = document.getElementById('precision'); el.value = 'fp32'; el.dispatchEvent(new Event('change'));""")
    wait_for(d, f"window.viewer.stats.frames > {n}")
    assert server.alive()


def test_save_png_and_codes(page, server, tmp_path):
    """The page's save buttons: the PNG is the full frame, the code file loads in `dgnerf render`."""
    d = page
    settle(d)
    # capture the downloads in the page instead of the browser's download folder
    d.execute_script("""window.__saved = [];
        const orig = URL.createObjectURL;
        URL.createObjectURL = (b) => { if (b.type !== 'image/jpeg') b.arrayBuffer().then((a) =>
            window.__saved.push([b.type, Array.from(new Uint8Array(a))])); return orig(b); };""")
    d.find_element("id", "save-png").click()
    d.find_element("id", "save-codes").click()
    saved = wait_for(d, "window.__saved.length >= 2 && window.__saved", 60)
    kinds = {t: bytes(v) for t, v in saved}
    png = kinds["image/png"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    codes = tmp_path / "codes.safetensors"
    codes.write_bytes(kinds["application/octet-stream"])
    from dgnerf.codes import load_code

    assert load_code(str(codes), 512, "identity").shape == (1, 512)
    assert load_code(str(codes), 46, "expression").shape == (1, 46)


def test_sequence_playback_and_code_file_upload(page, server, tmp_path):
    """Play a person's recorded sequence (the sliders follow its codes), then add a code file through the page's
    file picker: a new person in both menus, chosen as A, rendered."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = page
    settle(d)
    n = d.execute_script("return window.viewer.stats.frames")
    d.find_element(By.ID, "play").click()
    wait_for(d, f"window.viewer.stats.frames > {n + 3} && window.viewer.stats.last.sliders")
    sliders = d.execute_script("return [...document.querySelectorAll('input.expression')].map((e) => Number(e.value))")
    assert any(abs(v) > 1e-3 for v in sliders), sliders
    d.find_element(By.ID, "play").click()  # stop
    assert d.execute_script("return window.viewer.state.sequence") is None

    code = tmp_path / "someone.txt"
    code.write_text(" ".join(str((-1) ** k * 0.04) for k in range(512)))
    persons = len(Select(d.find_element(By.ID, "identity-a")).options)
    n = d.execute_script("return window.viewer.stats.frames")
    d.find_element(By.ID, "upload").send_keys(str(code))
    wait_for(d, f"document.getElementById('identity-a').options.length > {persons}")
    assert Select(d.find_element(By.ID, "identity-a")).first_selected_option.text == "someone.txt"
    wait_for(d, f"window.viewer.stats.frames > {n}")
    assert d.execute_script("return window.viewer.state.identity.a") == persons
    # a file of the wrong length is an error in the page, not a new person
    bad = tmp_path / "short.txt"
    bad.write_text("1 2 3")
    d.find_element(By.ID, "upload").send_keys(str(bad))
    wait_for(d, "document.getElementById('error').textContent.includes('holds 3 numbers')")
    assert len(Select(d.find_element(By.ID, "identity-a")).options) == persons + 1
    assert server.alive()


def test_drag_preview_fps_and_idle_full_frame(page, server):
    """Paper config on this CPU: preview frames while the mouse drags the view (target >= 10 FPS), then the
    full frame after the release (target within 0.5 s)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    d = page
    settle(d)
    view = d.find_element(By.ID, "view")
    d.execute_script("""window.__drag = {}; const img = document.getElementById('view');
        img.addEventListener('pointerdown', () => { window.__drag.down = performance.now(); });
        img.addEventListener('pointerup', () => { window.__drag.up = performance.now(); });""")
    moves, step_ms = 200, 20  # 4 s of dragging, a move every 20 ms
    chain = ActionChains(d, duration=step_ms).move_to_element(view).click_and_hold()
    for i in range(moves):
        chain.move_by_offset(2 if (i // 50) % 2 == 0 else -2, 1 if (i // 25) % 2 == 0 else -1)
    chain.release().perform()
    t = wait_for(d, """window.__drag.up && window.viewer.stats.arrivals.some((a) => a.t > window.__drag.up &&
        a.quality === 'full') && window.__drag""", 30)
    arrivals = d.execute_script("return window.viewer.stats.arrivals")
    down, up = t["down"], t["up"]
    previews = [a["t"] for a in arrivals if down <= a["t"] <= up and a["quality"] == "preview"]
    # FPS over the steady part of the drag: from the first preview to the release
    fps = (len(previews) - 1) / ((up - previews[0]) / 1e3) if len(previews) > 1 else 0.0
    full_after = min(a["t"] for a in arrivals if a["t"] > up and a["quality"] == "full") - up
    last = d.execute_script("return window.viewer.stats.last")
    rec = {"preview_fps": round(fps, 2), "preview_frames": len(previews), "drag_s": round((up - down) / 1e3, 2),
           "full_frame_after_release_ms": round(full_after, 1), "full_frame_timings_ms": last["timings"],
           "options": d.execute_script("return window.viewer.state.options"), "cpu_threads": os.cpu_count(),
           "load_average": os.getloadavg()[0]}
    record("drag", rec)
    assert server.alive()
    assert fps >= 10.0 / SLACK, rec
    assert full_after <= 500.0 * SLACK, rec


# ------------------------------------------------------------------ live driving with the fake camera
def _live_missing() -> str | None:
    from dgnerf.apps.viewer.live import live_available
    from dgnerf.assets import have

    ok, why = live_available()
    if not ok:
        return why + " [CI runs this test in scripts/viewer_live_check.sh's own virtualenv]"
    if not have("carphone"):
        return "the carphone clip is not fetched (dgnerf assets fetch --only carphone)"
    return None


@pytest.fixture(scope="module")
def carphone_live(tmp_path_factory, paper_checkpoint):
    """The stamped clip as y4m, each frame's yaw tracked offline, and a small dataset whose expression basis
    is built from the clip's landmarks (what `dgnerf preprocess` stores), so the webcam drives expression too."""
    why = _live_missing()
    if why:
        pytest.skip(why)
    import imageio.v2 as iio

    from dgnerf.apps.viewer.live import LiveTracker
    from dgnerf.assets import asset_path, load_face_geometry
    from dgnerf.data import DatasetWriter
    from dgnerf.preprocess.expression import N_FACE, ExpressionBasis, to_shape_frame
    from dgnerf.preprocess.sources import MediaPipeFaces

    tmp = tmp_path_factory.mktemp("live")
    with iio.get_reader(str(asset_path("carphone")), "ffmpeg") as r:
        frames = [stamp(np.asarray(f)[..., :3], k) for k, f in enumerate(r)]
    y4m = str(tmp / "carphone.y4m")
    write_y4m(y4m, frames, fps=30)  # a webcam's rate (the clip's own is 29.97)
    faces = MediaPipeFaces(static=False, max_faces=1)
    geo = load_face_geometry()
    tracker = LiveTracker(None, faces_fn=faces, geometry=geo)
    truth, shapes = [], []
    for f in frames:
        lm = faces(f)
        tr, _ = tracker(f)
        truth.append(np.nan if tr is None else tr.yaw)
        if lm:
            shapes.append(to_shape_frame(lm[0][:N_FACE], f.shape[1], f.shape[0]))
    tracker.close()
    w = np.zeros(N_FACE)
    w[np.asarray(geo["procrustes_ids"], int)] = geo["procrustes_weights"]
    basis, codes = ExpressionBasis.build({"carphone": np.stack(shapes)}, 46, w, np.asarray(geo["vertices"]))
    data = tmp / "carphone_set"
    with DatasetWriter(data, resolution=16, head_radius=1.35) as wr:
        for c in codes["carphone"][::4]:  # the clip's expressions: the sliders are their principal components
            wr.add_frame(np.zeros((16, 16, 3), np.uint8), np.full((16, 16), 255, np.uint8), np.eye(4),
                         (20.0, 20.0, 8.0, 8.0), c.astype(np.float32), np.ones(512, np.float32) / 512 ** 0.5,
                         person="carphone")
        wr.set_expression_basis(basis.tensors(), basis.metadata())
    return {"y4m": y4m, "truth": np.asarray(truth), "data": str(data), "n": len(frames)}


def test_live_driving_follows_the_fake_camera(carphone_live, paper_checkpoint):
    """Webcam driving on the CPU: rendered FPS (target >= 5), camera frame to its render (target <= 300 ms),
    rendered yaw against the clip's tracked yaw (target correlation >= 0.9)."""
    from selenium.webdriver.common.by import By

    srv = ViewServer(paper_checkpoint, "--data", carphone_live["data"])
    d = chrome(fake_video=carphone_live["y4m"], width=1400, height=1000)
    try:
        d.get(srv.url)
        wait_for(d, "window.viewer && window.viewer.stats.fulls >= 1", 120)
        assert d.execute_script("return window.viewer.hello.live.available"), d.execute_script("return window.viewer.hello.live")
        d.execute_script(READ_STAMP_JS)
        d.find_element(By.ID, "webcam").click()
        wait_for(d, "window.viewer.stats.live.length >= 3", 60)
        d.execute_script("window.viewer.stats.live = []; window.viewer.stats.latencies = []; window.__t0 = performance.now();")
        time.sleep(12.0)  # the 4-s clip three times round
        live, t0, t1, stamps = d.execute_script(
            "return [window.viewer.stats.live, window.__t0, performance.now(), window.viewer.stamps]")
        d.save_screenshot(os.path.join(os.path.dirname(carphone_live["y4m"]), "live.png"))
        status = d.find_element(By.ID, "live-status").text
    finally:
        d.quit()
        srv.stop()
    assert live, "no live frame was rendered"
    fps = len(live) / ((t1 - t0) / 1e3)
    lat = np.array([x["latency"] for x in live])
    truth = carphone_live["truth"]
    pairs = [(x["yaw"], truth[stamps[str(x["id"])]]) for x in live
             if str(x["id"]) in stamps and stamps[str(x["id"])] < len(truth) and np.isfinite(truth[stamps[str(x["id"])]])]
    rendered, tracked = np.array(pairs).T
    corr = float(np.corrcoef(rendered, tracked)[0, 1])
    rec = {"rendered_fps": round(fps, 2), "frames": len(live), "latency_ms_median": round(float(np.median(lat)), 1),
           "latency_ms_p90": round(float(np.percentile(lat, 90)), 1), "yaw_correlation": round(corr, 4),
           "yaw_range_deg": [round(float(tracked.min()), 2), round(float(tracked.max()), 2)],
           "distinct_video_frames": len({stamps[str(x["id"])] for x in live if str(x["id"]) in stamps}),
           "track_ms_median": round(float(np.median([x["track_ms"] for x in live])), 1),
           "render_ms_median": round(float(np.median([x["render_ms"] for x in live])), 1),
           "frame_wait_ms_median": round(float(np.median([x["wait_ms"] for x in live])), 1),
           "engine_idle_ms_median": round(float(np.median([x["idle_ms"] for x in live])), 1),
           "lead_ms_last": round(float(live[-1]["lead_ms"]), 1),
           "expression_pc1_spread": round(float(np.std([x["sliders"][0] for x in live if x.get("sliders")])), 3),
           "quality": live[-1]["quality"], "load_average": os.getloadavg()[0], "status": status}
    record("live", rec)
    assert corr >= 0.9, rec
    assert fps >= 5.0 / SLACK, rec
    assert np.median(lat) <= 300.0 * SLACK, rec
    assert "expression" in status, status
    # the expression follows the face too: the clip's mouth opens and closes, the first component moves with it
    assert rec["expression_pc1_spread"] > 0.2, rec
