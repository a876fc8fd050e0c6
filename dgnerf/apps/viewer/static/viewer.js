// dgnerf view: the page. Sends its whole state on every change (the server renders only the newest), shows
// the frames that come back, and, with the webcam on, sends one camera frame at a time (the next after the
// answer to the last). window.viewer holds the live numbers (FPS, latencies) for people and browser tests.
"use strict";

const $ = (id) => document.getElementById(id);
const viewer = (window.viewer = {
  stats: { frames: 0, previews: 0, fulls: 0, errors: [], last: null, arrivals: [], latencies: [], live: [], liveFailures: 0 },
  hooks: {}, // hooks.cameraFrame(ctx, id, canvas): called with each webcam frame before it is sent
  state: null,
  hello: null,
  connected: false,
});

let ws = null;
let state = null;
let dragTimer = null;
let playTimer = null;
let cameraStream = null;
let cameraId = 0;
const waiting = new Map(); // webcam frames sent, not started on the server: id -> when grabbed (pacing, below)
let shownUrl = null;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }

function showError(message) {
  $("error").textContent = message;
  viewer.stats.errors.push(message);
}

// ------------------------------------------------------------------ the connection
function connect() {
  ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { viewer.connected = true; $("status").textContent = "connected"; };
  ws.onclose = () => {
    viewer.connected = false;
    $("status").textContent = "disconnected (is `dgnerf view` still running?)";
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") onText(JSON.parse(ev.data));
    else onBinary(ev.data);
  };
}

function packBinary(header, payload) {
  const h = encoder.encode(JSON.stringify(header));
  const out = new Uint8Array(4 + h.length + payload.byteLength);
  new DataView(out.buffer).setUint32(0, h.length);
  out.set(h, 4);
  out.set(new Uint8Array(payload), 4 + h.length);
  return out.buffer;
}

function onText(msg) {
  if (msg.type === "hello") setup(msg);
  else if (msg.type === "error") { showError(msg.message); cameraDone(); }
  else if (msg.type === "live_started") cameraStarted(msg.id, msg.expect_ms);
  else if (msg.type === "live") {
    if (msg.reason === "dropped") viewer.stats.liveDropped = (viewer.stats.liveDropped || 0) + 1;
    else {
      viewer.stats.liveFailures += 1;
      $("live-status").textContent = `no head tracked (${msg.reason})`;
    }
    cameraDone(msg.id);
  } else if (msg.type === "neutral") {
    $("live-status").textContent = msg.ok ? (msg.action === "set" ? "neutral: this face" : "neutral: running median")
      : "no tracked face yet";
  } else if (msg.type === "persons") {
    fillPersons(msg.persons);
    $("identity-a").value = String(msg.added);
    state.identity.a = msg.added;
    $("identity-t").value = "0";
    state.identity.t = 0;
    send(false);
  }
}

function onBinary(buf) {
  const n = new DataView(buf).getUint32(0);
  const header = JSON.parse(decoder.decode(new Uint8Array(buf, 4, n)));
  const payload = new Uint8Array(buf, 4 + n);
  if (header.type === "frame") showFrame(header, payload);
  else if (header.type === "png") download(payload, "image/png", "dgnerf-view.png");
  else if (header.type === "codes") download(payload, "application/octet-stream", "dgnerf-view-codes.safetensors");
}

function download(bytes, type, name) {
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function showFrame(h, jpeg) {
  const now = performance.now();
  const s = viewer.stats;
  s.frames += 1;
  if (h.quality === "preview") s.previews += 1; else s.fulls += 1;
  s.last = h;
  s.arrivals.push({ t: now, quality: h.quality, n: h.n });
  if (s.arrivals.length > 2000) s.arrivals.splice(0, 1000);
  const img = $("view");
  const url = URL.createObjectURL(new Blob([jpeg], { type: "image/jpeg" }));
  img.onload = () => {
    if (shownUrl) URL.revokeObjectURL(shownUrl);
    shownUrl = url;
    s.shown = (s.shown || 0) + 1;
    if (h.live) {
      const latency = performance.now() - h.live.t;
      s.latencies.push(latency);
      s.live.push({ id: h.live.id, yaw: h.pose[0], pitch: h.pose[1], roll: h.pose[2], tracked: h.live.tracked,
                    latency, shownAt: performance.now(), quality: h.quality, track_ms: h.live.track_ms,
                    wait_ms: h.live.wait_ms, idle_ms: h.live.idle_ms, render_ms: h.render_ms, lead_ms: leadMs,
                    sliders: h.sliders });
      $("latency").textContent = `camera → render ${latency.toFixed(0)} ms (track ${h.live.track_ms} ms)`;
    }
  };
  img.src = url;
  const recent = s.arrivals.filter((a) => now - a.t < 1000).length;
  $("fps").textContent = recent.toFixed(1);
  $("quality").textContent = `${h.quality} ${h.size}×${h.size}`;
  $("ms").textContent = `${h.total_ms.toFixed(0)} ms/frame`;
  $("timings").textContent = Object.entries(h.timings).map(([k, v]) => `${k} ${Number(v).toFixed(1)}`).join(" · ") + " ms";
  if (h.sliders) setSliders(h.sliders);
  if (h.live) {
    leadMs = clamp(leadMs + 0.5 * (h.live.idle_ms - h.live.wait_ms), 0, 400);
    const [y, p, r] = h.pose;
    $("live-pose").textContent = `tracked yaw ${y.toFixed(1)}° pitch ${p.toFixed(1)}° roll ${r.toFixed(1)}°`;
    $("live-status").textContent = viewer.hello.live.expression ? "driving pose and expression"
      : "driving the pose (the dataset has no landmark expression basis: expression from the sliders)";
    cameraDone(h.live.id);
  }
}

// ------------------------------------------------------------------ the controls
function setup(hello) {
  viewer.hello = hello;
  const d = $("distance");
  d.min = hello.distance_range[0]; d.max = hello.distance_range[1]; d.value = hello.distance;
  fillSelect($("precision"), hello.precisions, hello.device === "cuda" ? "fp16" : "bf16");
  fillSelect($("skip"), hello.skip_strides.map(String), "4");
  $("ert").checked = true;
  $("live-quality").value = hello.live_quality;
  fillPersons(hello.persons);
  $("identity-b").value = String(Math.min(1, hello.persons.length - 1));
  const box = $("expression");
  box.textContent = "";
  hello.components.forEach((c, i) => {
    const label = document.createElement("label");
    const name = document.createElement("span");
    name.className = "expr-label";
    name.textContent = `${hello.component_source === "pca" ? "PC" : "code "}${i + 1}${c.label ? ": " + c.label : ""}`;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min: "-3", max: "3", step: "0.05", value: "0", id: `expression-${i}` });
    input.className = "expression";
    const out = document.createElement("output");
    label.append(name, input, out);
    box.append(label);
    bindRange(input, () => { state.expression[i] = Number(input.value); });
  });
  $("component-source").textContent = hello.component_source === "pca"
    ? `(principal components of ${hello.dataset.root}'s codes)` : "(raw code entries: no --data)";
  const seqPersons = hello.persons.map((p, i) => ({ p, i })).filter((x) => x.p.frames > 0);
  const sp = $("sequence-person");
  sp.textContent = "";
  for (const { p, i } of seqPersons) sp.append(new Option(`${p.name} (${p.frames})`, String(i)));
  $("play").disabled = seqPersons.length === 0;
  const live = hello.live;
  $("webcam").disabled = !live.available;
  $("live-status").textContent = live.available
    ? (live.expression ? "pose and expression from the webcam" : "pose from the webcam (no landmark expression basis in --data)")
    : `live driving is off: ${live.reason}`;
  state = {
    type: "state",
    camera: { yaw: 0, pitch: 0, roll: 0, distance: hello.distance },
    identity: { a: 0, b: Number($("identity-b").value), t: 0 },
    expression: hello.components.map(() => 0),
    sequence: null,
    options: { precision: $("precision").value, skip: Number($("skip").value), ert: 1e-3 },
    drag: false,
    live: false,
    live_quality: hello.live_quality,
  };
  viewer.state = state;
  updateOutputs();
  send(false);
}

function fillSelect(sel, values, preferred) {
  sel.textContent = "";
  for (const v of values) sel.append(new Option(v, v));
  if (values.includes(preferred)) sel.value = preferred;
}

function fillPersons(persons) {
  for (const id of ["identity-a", "identity-b"]) {
    const sel = $(id);
    const keep = sel.value;
    sel.textContent = "";
    persons.forEach((p, i) => sel.append(new Option(p.name, String(i))));
    if (keep !== "" && Number(keep) < persons.length) sel.value = keep;
  }
  viewer.hello.persons = persons;
}

function setSliders(values) {
  values.forEach((v, i) => {
    const el = $(`expression-${i}`);
    if (el) el.value = String(v);
  });
  updateOutputs();
}

function updateOutputs() {
  for (const out of document.querySelectorAll("output")) {
    const el = $(out.htmlFor.value || out.getAttribute("for"));
    if (el) out.textContent = Number(el.value).toFixed(el.step && Number(el.step) < 0.1 ? 2 : 1);
  }
  for (const el of document.querySelectorAll("input.expression")) {
    el.parentElement.querySelector("output").textContent = Number(el.value).toFixed(2);
  }
}

function send(drag) {
  if (!state || !ws || ws.readyState !== WebSocket.OPEN) return;
  state.drag = drag;
  ws.send(JSON.stringify(state));
  if (drag) {
    // a drag that pauses (the pointer held still) also gets its full frame
    clearTimeout(dragTimer);
    dragTimer = setTimeout(() => send(false), 300);
  } else {
    clearTimeout(dragTimer);
  }
}

function readCamera() {
  state.camera.yaw = Number($("yaw").value);
  state.camera.pitch = Number($("pitch").value);
  state.camera.roll = Number($("roll").value);
  state.camera.distance = Number($("distance").value);
}

function writeCamera() {
  $("yaw").value = String(state.camera.yaw);
  $("pitch").value = String(state.camera.pitch);
  $("roll").value = String(state.camera.roll);
  $("distance").value = String(state.camera.distance);
  updateOutputs();
}

function bindRange(el, apply) {
  el.addEventListener("input", () => { apply(); updateOutputs(); send(true); });
  el.addEventListener("change", () => { apply(); updateOutputs(); send(false); });
}

function bindControls() {
  for (const id of ["yaw", "pitch", "roll", "distance"]) bindRange($(id), readCamera);
  $("reset-camera").onclick = () => {
    Object.assign(state.camera, { yaw: 0, pitch: 0, roll: 0, distance: viewer.hello.distance });
    writeCamera(); send(false);
  };
  $("identity-a").onchange = () => { state.identity.a = Number($("identity-a").value); send(false); };
  $("identity-b").onchange = () => { state.identity.b = Number($("identity-b").value); send(false); };
  bindRange($("identity-t"), () => { state.identity.t = Number($("identity-t").value); });
  $("upload").onchange = async () => {
    const f = $("upload").files[0];
    if (!f) return;
    ws.send(packBinary({ type: "upload", name: f.name }, await f.arrayBuffer()));
    $("upload").value = "";
  };
  $("reset-expression").onclick = () => {
    stopPlaying();
    state.expression = state.expression.map(() => 0);
    setSliders(state.expression);
    send(false);
  };
  $("play").onclick = () => (playTimer ? stopPlaying() : startPlaying());
  bindRange($("sequence-frame"), () => { setSequence(Number($("sequence-frame").value)); });
  $("sequence-pose").onchange = () => { if (state.sequence) { state.sequence.pose = $("sequence-pose").checked; send(false); } };
  $("precision").onchange = () => { state.options.precision = $("precision").value; send(false); };
  $("skip").onchange = () => { state.options.skip = Number($("skip").value); send(false); };
  $("ert").onchange = () => { state.options.ert = $("ert").checked ? 1e-3 : 0; send(false); };
  $("live-quality").onchange = () => { state.live_quality = $("live-quality").value; send(false); };
  $("save-png").onclick = () => ws.send(JSON.stringify({ type: "save_png" }));
  $("save-codes").onclick = () => ws.send(JSON.stringify({ type: "save_codes" }));
  $("webcam").onclick = () => (cameraStream ? stopCamera() : startCamera());
  $("neutral-set").onclick = () => ws.send(JSON.stringify({ type: "neutral", action: "set" }));
  $("neutral-reset").onclick = () => ws.send(JSON.stringify({ type: "neutral", action: "reset" }));
  bindMouse();
}

// orbit with the mouse: horizontal = yaw, vertical = pitch, shift or the right button = roll, wheel = zoom
function bindMouse() {
  const img = $("view");
  let last = null;
  img.addEventListener("contextmenu", (e) => e.preventDefault());
  img.addEventListener("pointerdown", (e) => {
    if (!state) return;
    img.setPointerCapture(e.pointerId);
    img.classList.add("dragging");
    last = { x: e.clientX, y: e.clientY, roll: e.shiftKey || e.button === 2 };
  });
  img.addEventListener("pointermove", (e) => {
    if (!last) return;
    const dx = e.clientX - last.x, dy = e.clientY - last.y;
    last.x = e.clientX; last.y = e.clientY;
    if (last.roll) state.camera.roll = clamp(state.camera.roll + dx * 0.3, -90, 90);
    else {
      state.camera.yaw = clamp(state.camera.yaw - dx * 0.3, -90, 90);
      state.camera.pitch = clamp(state.camera.pitch + dy * 0.3, -60, 60);
    }
    writeCamera();
    send(true);
  });
  const end = () => { if (last) { last = null; img.classList.remove("dragging"); send(false); } };
  img.addEventListener("pointerup", end);
  img.addEventListener("pointercancel", end);
  img.addEventListener("wheel", (e) => {
    if (!state) return;
    e.preventDefault();
    const [lo, hi] = viewer.hello.distance_range;
    state.camera.distance = clamp(state.camera.distance * Math.exp(e.deltaY * 0.001), lo, hi);
    writeCamera();
    send(true);
  }, { passive: false });
  img.addEventListener("dblclick", () => $("reset-camera").click());
}

// ------------------------------------------------------------------ a person's recorded sequence
function setSequence(frame) {
  const p = Number($("sequence-person").value);
  state.sequence = { person: p, frame, pose: $("sequence-pose").checked };
}

function startPlaying() {
  const p = Number($("sequence-person").value);
  const n = viewer.hello.persons[p].frames;
  const fr = $("sequence-frame");
  fr.max = String(n - 1);
  let f = Number(fr.value) % n;
  $("play").textContent = "stop";
  playTimer = setInterval(() => {
    f = (f + 1) % n;
    fr.value = String(f);
    updateOutputs();
    setSequence(f);
    send(false);
  }, 100);
}

function stopPlaying() {
  if (playTimer) clearInterval(playTimer);
  playTimer = null;
  $("play").textContent = "play";
  if (state && state.sequence) { state.sequence = null; send(false); }
}

// ------------------------------------------------------------------ the webcam
async function startCamera() {
  try {
    cameraStream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 320 }, height: { ideal: 240 } }, audio: false });
  } catch (e) {
    showError(`webcam: ${e.name}: ${e.message}`);
    cameraStream = null;
    return;
  }
  const video = $("camera");
  video.srcObject = cameraStream;
  await video.play();
  $("camera-box").classList.remove("hidden");
  $("webcam").textContent = "stop webcam";
  $("neutral-set").disabled = $("neutral-reset").disabled = false;
  state.live = true;
  setPoseSliders(false); // the webcam's head pose replaces them while it drives
  send(false);
  grabNext();
}

function stopCamera() {
  for (const t of cameraStream.getTracks()) t.stop();
  cameraStream = null;
  waiting.clear();
  processing.clear();
  $("camera-box").classList.add("hidden");
  $("webcam").textContent = "start webcam";
  $("neutral-set").disabled = $("neutral-reset").disabled = true;
  state.live = false;
  setPoseSliders(true);
  send(false);
}

function setPoseSliders(enabled) {
  for (const id of ["yaw", "pitch", "roll"]) $(id).disabled = !enabled;
}

// Webcam pacing: one frame processing on the server and at most one waiting behind it. When the server starts
// on a frame ("live_started") it says how long its frames take (expect_ms); the page grabs the next camera frame
// LEAD_MS before that one should be done, so it arrives as the engine frees up: the engine hardly waits for the
// page, and the frame hardly waits on the server (a frame grabbed at once would wait a whole render). A frame
// the server replaces with a newer one is answered "dropped".
// lead: how much before that the grab starts (the wait for the next video frame, <= 33 ms at 30 fps, the JPEG
// encode and the upload), learnt from the server's report of each frame: the engine idled for it (grab earlier)
// or it waited for the engine (grab later).
let leadMs = 50;
const processing = new Map(); // started on the server, not answered yet
let grabNotBefore = 0;

function cameraStarted(id, expectMs) {
  if (waiting.has(id)) { processing.set(id, waiting.get(id)); waiting.delete(id); }
  grabNotBefore = performance.now() + Math.max(0, (expectMs || 0) - leadMs);
  grabNext();
}

function cameraDone(id) {
  if (id === undefined) { waiting.clear(); processing.clear(); } // an error names no frame: start afresh
  else { waiting.delete(id); processing.delete(id); }
  grabNext();
}

function cameraBusy() { return waiting.size >= 1 || processing.size >= 2; }

let grabPending = false;
function grabNext() {
  if (!cameraStream || grabPending || cameraBusy()) return;
  const early = processing.size > 0 ? grabNotBefore - performance.now() : 0;
  if (early > 0) {
    grabPending = true;
    setTimeout(() => { grabPending = false; grabNext(); }, early);
    return;
  }
  const video = $("camera");
  grabPending = true;
  const grab = () => {
    grabPending = false;
    if (!cameraStream || cameraBusy()) return;
    const w = video.videoWidth, h = video.videoHeight;
    if (!w || !h) { grabPending = true; setTimeout(grab, 30); return; }
    const scale = Math.min(1, 320 / w);
    const canvas = $("grab");
    canvas.width = Math.round(w * scale);
    canvas.height = Math.round(h * scale);
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
    const id = cameraId++;
    const t = performance.now();
    if (viewer.hooks.cameraFrame) viewer.hooks.cameraFrame(ctx, id, canvas);
    waiting.set(id, t);
    canvas.toBlob(async (blob) => {
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      ws.send(packBinary({ type: "camera", id, t }, await blob.arrayBuffer()));
    }, "image/jpeg", 0.85);
    grabNext();
  };
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(() => grab());
  else setTimeout(grab, 30);
}

// an answer that never came (a dropped message) must not stop the webcam loop
setInterval(() => {
  const now = performance.now();
  for (const m of [waiting, processing]) for (const [id, sent] of m) if (now - sent > 3000) m.delete(id);
  grabNext();
}, 1000);

bindControls();
connect();
