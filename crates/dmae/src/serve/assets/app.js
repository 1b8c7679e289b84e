// dmae serve: the page. Plain JavaScript, no dependencies, served from the binary.
"use strict";

const $ = (id) => document.getElementById(id);

const S = {
  info: null,          // GET /api/info
  input: null,         // "val-N" or "upload-N"
  image: null,         // the input as an <img>: frames side by side at the model's size
  mask: [],            // rows x cols booleans, true = hidden
  running: false,
  steps: [],           // [{index, t, ms, canvas}] kept for replay
  expected: 0,         // steps announced by the start event
  received: 0,         // step events seen
  timesteps: [],
  pending: null,       // the newest step not drawn yet (drawn once per animation frame)
  urls: [],            // blob URLs to free on the next run
};

// ---------- geometry ----------

function model() { return S.info.model; }
function dims() {
  const m = model();
  return { h: m.image_size[0], w: m.image_size[1], frames: m.video ? m.frames : 1,
           rows: m.grid[0], cols: m.grid[1], p: m.patch_size };
}
const GAP = 6;  // pixels between the frames of a clip on a canvas

/// Integer display scale so that the frames together are about `target` pixels wide.
function scaleFor(target, maxFrame) {
  const d = dims();
  const perFrame = Math.min(maxFrame, Math.floor((target - GAP * (d.frames - 1)) / d.frames));
  return Math.max(1, Math.floor(perFrame / Math.max(d.h, d.w)));
}

function sizeCanvas(canvas, s) {
  const d = dims();
  canvas.width = d.frames * d.w * s + GAP * (d.frames - 1);
  canvas.height = d.h * s;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  return ctx;
}

/// Draws `source` (frames side by side at the model's size) scaled by `s`, frames apart.
function drawFrames(ctx, source, s) {
  const d = dims();
  ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
  for (let f = 0; f < d.frames; f++) {
    ctx.drawImage(source, f * d.w, 0, d.w, d.h, f * (d.w * s + GAP), 0, d.w * s, d.h * s);
  }
}

// ---------- messages ----------

function say(el, text, kind) {
  el.textContent = text || "";
  el.className = el.className.replace(/\b(error|ok)\b/g, "").trim() + (kind ? " " + kind : "");
}

async function api(path, options) {
  const r = await fetch(path, options);
  const isJson = (r.headers.get("content-type") || "").includes("application/json");
  const body = isJson ? await r.json() : null;
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

// ---------- start ----------

/// 86.4M, 41.2K, 960: a parameter count as people say it (as the server's log line).
function count(n) {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}K` : `${n}`;
}

async function init() {
  try {
    S.info = await api("/api/info");
  } catch (e) {
    say($("model"), "cannot reach the server: " + e.message, "error");
    document.body.dataset.state = "error";
    return;
  }
  const m = model(), d = dims();
  const frames = m.video ? `${m.frames} frames of ` : "";
  $("model").textContent =
    `${m.kind} · ${count(m.parameters)} parameters · ${frames}${m.channels === 1 ? "grey" : "RGB"} ` +
    `${d.w}×${d.h} · patch ${d.p} (${d.cols}×${d.rows}) · T = ${m.timesteps} · ${m.device} · ${m.checkpoint}`;
  $("gallery-name").textContent = `of ${S.info.gallery.count} · ${S.info.gallery.name}`;
  $("val-index").max = S.info.gallery.count - 1;
  $("upload-limit").textContent = `up to ${(S.info.limits.upload_bytes / 1048576).toFixed(0)} MiB`;
  $("ddpm-steps").textContent = `all ${m.timesteps} steps`;
  if (m.video) {
    document.querySelector("label[for=file]").classList.add("disabled");
    $("upload-limit").textContent = "video model: clips come from the gallery";
  }
  if (!m.diffusion) {
    // An MAE checkpoint (mask-token decoder) answers in one decoder call.
    for (const el of document.querySelectorAll("input[name=sampler]")) {
      el.checked = el.value === "mae";
      if (el.value !== "mae") el.closest(".choice").classList.add("disabled");
    }
  }
  buildGallery();
  wire();
  S.mask = new Array(d.rows * d.cols).fill(false);
  await selectInput("val-0");
  await presetMask("center");
  document.body.dataset.state = "ready";
}

function buildGallery() {
  const d = dims();
  const n = Math.min(S.info.gallery.count, 24);
  const box = $("gallery");
  for (let i = 0; i < n; i++) {
    const c = document.createElement("canvas");
    c.width = d.w; c.height = d.h;
    c.title = `val-${i}`;
    c.dataset.id = `val-${i}`;
    const img = new Image();
    img.onload = () => c.getContext("2d").drawImage(img, 0, 0, d.w, d.h, 0, 0, d.w, d.h);
    img.src = `/api/input/val-${i}.png`;
    c.addEventListener("click", () => { $("val-index").value = i; selectInput(`val-${i}`); });
    box.appendChild(c);
  }
}

function wire() {
  $("val-index").addEventListener("change", () => {
    const i = Math.max(0, Math.min(S.info.gallery.count - 1, parseInt($("val-index").value, 10) || 0));
    $("val-index").value = i;
    selectInput(`val-${i}`);
  });
  $("file").addEventListener("change", upload);
  $("mask-center").addEventListener("click", () => presetMask("center"));
  $("mask-random").addEventListener("click", () => presetMask("random"));
  $("mask-clear").addEventListener("click", () => { S.mask.fill(false); maskChanged(); });
  $("mask-invert").addEventListener("click", () => { S.mask = S.mask.map((m) => !m); maskChanged(); });
  $("inpaint").addEventListener("click", inpaint);
  $("scrub").addEventListener("input", () => {
    const s = S.steps[parseInt($("scrub").value, 10)];
    if (s) showStep(s);
  });
  const ed = $("editor");
  let paint = null;
  ed.addEventListener("pointerdown", (e) => {
    const i = patchAt(e);
    if (i < 0) return;
    paint = !S.mask[i];
    S.mask[i] = paint;
    ed.setPointerCapture(e.pointerId);
    maskChanged();
  });
  ed.addEventListener("pointermove", (e) => {
    if (paint === null) return;
    const i = patchAt(e);
    if (i >= 0 && S.mask[i] !== paint) { S.mask[i] = paint; maskChanged(); }
  });
  const stop = () => { paint = null; };
  ed.addEventListener("pointerup", stop);
  ed.addEventListener("pointercancel", stop);
}

// ---------- input ----------

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`cannot load ${src}`));
    img.src = src;
  });
}

async function selectInput(id) {
  try {
    S.image = await loadImage(`/api/input/${id}.png`);
  } catch (e) {
    say($("input-note"), e.message, "error");
    return;
  }
  S.input = id;
  for (const c of document.querySelectorAll(".gallery canvas")) c.classList.toggle("selected", c.dataset.id === id);
  if (id.startsWith("val-")) say($("input-note"), `validation sample ${id.slice(4)}`);
  drawEditor();
  drawInputPanels();
}

async function upload() {
  const file = $("file").files[0];
  $("file").value = "";
  if (!file) return;
  const limit = S.info.limits.upload_bytes;
  if (file.size > limit) {
    say($("input-note"), `${file.name}: the upload is ${(file.size / 1048576).toFixed(1)} MiB; ` +
        `this server takes at most ${(limit / 1048576).toFixed(1)} MiB`, "error");
    return;
  }
  say($("input-note"), `uploading ${file.name}…`);
  try {
    const added = await api("/api/upload", { method: "POST", body: file });
    await selectInput(added.id);
    say($("input-note"), `${file.name}: ${added.note}`, "ok");
  } catch (e) {
    say($("input-note"), `${file.name}: ${e.message}`, "error");
  }
}

// ---------- mask ----------

function editorScale() { return scaleFor(360, 300); }

function patchAt(e) {
  const d = dims(), s = editorScale(), ed = $("editor");
  const r = ed.getBoundingClientRect();
  const x = (e.clientX - r.left) * (ed.width / r.width), y = (e.clientY - r.top) * (ed.height / r.height);
  const frameW = d.w * s + GAP;
  const f = Math.floor(x / frameW), fx = x - f * frameW;
  if (f < 0 || f >= d.frames || fx >= d.w * s || y < 0 || y >= d.h * s) return -1;
  const col = Math.floor(fx / (d.p * s)), row = Math.floor(y / (d.p * s));
  if (row >= d.rows || col >= d.cols) return -1;
  return row * d.cols + col;
}

function drawEditor() {
  if (!S.image) return;
  const d = dims(), s = editorScale();
  const ctx = sizeCanvas($("editor"), s);
  drawFrames(ctx, S.image, s);
  const ps = d.p * s;
  for (let f = 0; f < d.frames; f++) {
    const x0 = f * (d.w * s + GAP);
    ctx.fillStyle = "rgba(49, 87, 213, 0.62)";
    for (let i = 0; i < S.mask.length; i++) {
      if (!S.mask[i]) continue;
      ctx.fillRect(x0 + (i % d.cols) * ps, Math.floor(i / d.cols) * ps, ps, ps);
    }
    ctx.strokeStyle = "rgba(255, 255, 255, 0.22)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let c = 1; c < d.cols; c++) { ctx.moveTo(x0 + c * ps + 0.5, 0); ctx.lineTo(x0 + c * ps + 0.5, d.rows * ps); }
    for (let r = 1; r < d.rows; r++) { ctx.moveTo(x0, r * ps + 0.5); ctx.lineTo(x0 + d.cols * ps, r * ps + 0.5); }
    ctx.stroke();
  }
}

function maskChanged() {
  const n = S.mask.filter(Boolean).length;
  $("mask-count").textContent = `${n} of ${S.mask.length} patches hidden`;
  drawEditor();
  drawInputPanels();
}

async function presetMask(mode) {
  const ratio = parseFloat($("mask-ratio").value);
  try {
    const r = await api("/api/mask", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ mode, ratio, seed: parseInt($("seed").value, 10) || 0 }),
    });
    S.mask = r.mask;
    maskChanged();
    say($("message"), "");
  } catch (e) {
    say($("message"), e.message, "error");
  }
}

// ---------- output panels ----------

function panelScale() { return scaleFor(dims().frames > 1 ? 620 : 200, 200); }

function drawInputPanels() {
  if (!S.image) return;
  const d = dims(), s = panelScale();
  const truth = sizeCanvas($("out-truth"), s);
  drawFrames(truth, S.image, s);
  const masked = sizeCanvas($("out-masked"), s);
  drawFrames(masked, S.image, s);
  masked.fillStyle = "rgb(128, 128, 128)";  // dmae sample's grey (0.5) for hidden pixels
  const ps = d.p * s;
  for (let f = 0; f < d.frames; f++) {
    const x0 = f * (d.w * s + GAP);
    for (let i = 0; i < S.mask.length; i++) {
      if (S.mask[i]) masked.fillRect(x0 + (i % d.cols) * ps, Math.floor(i / d.cols) * ps, ps, ps);
    }
  }
  if (!S.running && S.received === 0) {
    for (const id of ["out-mae", "out-live"]) sizeCanvas($(id), s);
  }
}

/// A step image from the stream as a canvas of frames side by side at the model's size.
async function stepCanvas(image) {
  const c = document.createElement("canvas");
  c.width = image.frames * image.width;
  c.height = image.height;
  const ctx = c.getContext("2d");
  if (image.format === "png") {
    const img = await loadImage("data:image/png;base64," + image.data);
    ctx.drawImage(img, 0, 0);
    return c;
  }
  const bytes = Uint8Array.from(atob(image.data), (ch) => ch.charCodeAt(0));
  const out = ctx.createImageData(c.width, c.height);
  const { frames, height: h, width: w, channels: ch } = image;
  for (let f = 0; f < frames; f++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const src = ((f * h + y) * w + x) * ch;
        const dst = (y * c.width + f * w + x) * 4;
        out.data[dst] = bytes[src];
        out.data[dst + 1] = bytes[src + (ch > 1 ? 1 : 0)];
        out.data[dst + 2] = bytes[src + (ch > 1 ? 2 : 0)];
        out.data[dst + 3] = 255;
      }
    }
  }
  ctx.putImageData(out, 0, 0);
  return c;
}

function showStep(step) {
  const s = panelScale();
  drawFrames(sizeCanvas($("out-live"), s), step.canvas, s);
  $("live-caption").textContent = `x̂₀ at t = ${step.t} (step ${step.index + 1} of ${S.expected})`;
}

function drawPending() {
  const step = S.pending;
  S.pending = null;
  if (!step) return;
  showStep(step);
  $("bar").style.width = `${(100 * (step.index + 1)) / S.expected}%`;
  $("step-info").textContent = `step ${step.index + 1} / ${S.expected} · t = ${step.t}`;
  $("timing").textContent = `${step.ms.toFixed(1)} ms this step`;
}

// ---------- sampling ----------

function request() {
  const sampler = document.querySelector("input[name=sampler]:checked").value;
  const temperature = parseFloat($("temperature").value);
  return {
    input: S.input,
    mask: S.mask,
    sampler,
    steps: parseInt($("steps").value, 10) || 1,
    eta: parseFloat($("eta").value) || 0,
    temperature: Number.isFinite(temperature) ? temperature : 1,
    seed: parseInt($("seed").value, 10) || 0,
  };
}

function resetOutput() {
  for (const u of S.urls) URL.revokeObjectURL(u);
  S.urls = [];
  S.steps = []; S.received = 0; S.expected = 0; S.pending = null;
  $("bar").style.width = "0";
  $("trajectory").replaceChildren();
  for (const id of ["download-result", "download-trajectory"]) {
    $(id).classList.add("disabled");
    $(id).removeAttribute("href");
  }
  $("scrub").disabled = true;
  $("scrub").max = 0;
  const s = panelScale();
  sizeCanvas($("out-mae"), s); sizeCanvas($("out-live"), s);
  $("mae-caption").textContent = "MAE: x̂₀ at t = T−1";
  $("live-caption").textContent = "x̂₀";
  $("step-info").textContent = "–"; $("timing").textContent = "";
}

async function inpaint() {
  if (S.running) return;
  S.running = true;
  $("inpaint").disabled = true;
  document.body.dataset.state = "running";
  resetOutput();
  say($("message"), "sending…");
  let ok = false;
  try {
    const r = await fetch("/api/inpaint", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(request()),
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error(body.error || `${r.status} ${r.statusText}`);
    }
    ok = await readEvents(r.body.getReader());
  } catch (e) {
    say($("message"), e.message, "error");
  } finally {
    S.running = false;
    $("inpaint").disabled = false;
    document.body.dataset.state = ok ? "done" : "error";
  }
}

/// Reads server-sent events (`event: NAME`, `data: JSON`, blank line) until the stream ends.
async function readEvents(reader) {
  const decoder = new TextDecoder();
  let buffer = "", done = false;
  for (;;) {
    const chunk = await reader.read();
    if (chunk.done) break;
    buffer += decoder.decode(chunk.value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) done = (await onEvent(JSON.parse(data))) || done;
    }
  }
  if (!done && !$("message").classList.contains("error")) say($("message"), "the stream ended early", "error");
  return done;
}

async function onEvent(ev) {
  switch (ev.event) {
    case "queued":
      say($("message"), ev.ahead > 0 ? `queued: ${ev.ahead} job(s) ahead` : "starting…");
      return false;
    case "start":
      S.expected = ev.steps;
      S.timesteps = ev.timesteps;
      $("sampler-desc").textContent = `${ev.sampler} · ${ev.masked_patches} hidden patches`;
      say($("message"), "sampling…");
      return false;
    case "step": {
      S.received++;
      const step = { index: ev.index, t: ev.t, ms: ev.ms, canvas: await stepCanvas(ev.image) };
      // Replay keeps at most ~250 steps (DDPM visits 1000).
      const every = Math.max(1, Math.ceil(S.expected / 250));
      if (ev.index % every === 0 || ev.index === S.expected - 1) S.steps.push(step);
      if (ev.index === 0) {
        const s = panelScale();
        drawFrames(sizeCanvas($("out-mae"), s), step.canvas, s);
        $("mae-caption").textContent = `MAE: x̂₀ at t = ${ev.t} (step 1)`;
      }
      if (!S.pending) requestAnimationFrame(drawPending);
      S.pending = step;
      return false;
    }
    case "done": {
      drawPending();
      const n = S.expected;
      $("timing").textContent =
        `${n} step${n === 1 ? "" : "s"}: sampling ${ev.sampling_ms.toFixed(1)} ms ` +
        `(${(ev.sampling_ms / n).toFixed(2)} ms/step) · streaming ${ev.streaming_ms.toFixed(1)} ms · ` +
        `total ${ev.total_ms.toFixed(1)} ms`;
      const result = pngUrl(ev.result_png), strip = pngUrl(ev.trajectory_png);
      $("download-result").href = result;
      $("download-trajectory").href = strip;
      for (const id of ["download-result", "download-trajectory"]) $(id).classList.remove("disabled");
      const img = document.createElement("img");
      img.id = "trajectory-img";
      img.alt = "x̂₀ trajectory, t = " + ev.trajectory_t.join(", ");
      img.src = strip;
      $("trajectory").replaceChildren(img);
      $("scrub").max = S.steps.length - 1;
      $("scrub").value = S.steps.length - 1;
      $("scrub").disabled = S.steps.length < 2;
      say($("message"), `done: ${S.received} steps streamed`, "ok");
      return true;
    }
    case "error":
      say($("message"), ev.message, "error");
      return false;
    default:
      return false;
  }
}

function pngUrl(b64) {
  const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
  S.urls.push(url);
  return url;
}

/// For tests and curious people: where the page stands.
window.dmaeStatus = () => ({
  state: document.body.dataset.state,
  expected: S.expected,
  received: S.received,
  masked: S.mask.filter(Boolean).length,
  input: S.input,
  message: $("message").textContent,
  inputNote: $("input-note").textContent,
  trajectoryLoaded: !!($("trajectory-img") && $("trajectory-img").complete && $("trajectory-img").naturalWidth > 0),
  resultReady: !!$("download-result").getAttribute("href"),
});

init();
