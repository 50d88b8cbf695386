// avatar4d web page: create an avatar from a portrait, play its frames, drag to move the camera.
// Talks to the v1 HTTP API of the same origin; no libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { avatar: null, frames: [], timer: null, yaw: 0, pitch: 0, fps: 25, busy: false };
const FRAMES = 24;

function status(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
}

async function api(path, options) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(`${response.status}: ${message}`);
  }
  return response.json();
}

async function loadSamples() {
  const { samples } = await api("/v1/samples");
  for (const name of samples) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    $("samples").appendChild(option);
  }
}

async function portraitBlob() {
  const file = $("portrait").files[0];
  if (file) return file;
  const sample = $("samples").value;
  if (!sample) throw new Error("choose a portrait file or a sample first");
  const response = await fetch(`/v1/samples/${sample}`);
  return response.blob();
}

function play(frames, fps) {
  clearInterval(state.timer);
  const canvas = $("view");
  const context = canvas.getContext("2d");
  const images = frames.map((url) => { const image = new Image(); image.src = url; return image; });
  let index = 0;
  Promise.all(images.map((image) => image.decode())).then(() => {
    state.frames = images;
    canvas.dataset.frames = String(images.length);
    canvas.dataset.renders = String(Number(canvas.dataset.renders) + 1);
    status(`avatar ${state.avatar.slice(0, 8)}: ${images.length} frames`, "playing");
    state.timer = setInterval(() => {
      context.imageSmoothingEnabled = true;
      context.drawImage(images[index], 0, 0, canvas.width, canvas.height);
      index = (index + 1) % images.length;
    }, 1000 / fps);
  });
}

async function render(body) {
  if (!state.avatar || state.busy) return;
  state.busy = true;
  status("rendering…", "rendering");
  try {
    const result = await api(`/v1/avatars/${state.avatar}/render`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    state.fps = result.fps;
    play(result.frames, result.fps);
  } catch (error) {
    status(`render failed: ${error.message}`, "error");
  } finally {
    state.busy = false;
  }
}

const driving = () => ({ preset: $("preset").value, frames: FRAMES });
const turntable = () => render({ driving: driving(), orbit: true });
const fixedView = () => render({ driving: driving(), cameras: [{ yaw: state.yaw, pitch: state.pitch }] });

async function create() {
  status("creating the avatar…", "creating");
  try {
    const blob = await portraitBlob();
    $("source").src = URL.createObjectURL(blob);
    const form = new FormData();
    form.append("portrait", blob, "portrait.png");
    form.append("seed", "0");
    const avatar = await api("/v1/avatars", { method: "POST", body: form });
    state.avatar = avatar.avatar_id;
    $("turntable").disabled = false;
    await turntable();
  } catch (error) {
    status(`could not create the avatar: ${error.message}`, "error");
  }
}

function dragging() {
  const canvas = $("view");
  let start = null;
  canvas.addEventListener("pointerdown", (event) => {
    start = { x: event.clientX, y: event.clientY, yaw: state.yaw, pitch: state.pitch };
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!start) return;
    state.yaw = Math.max(-45, Math.min(45, start.yaw - (event.clientX - start.x) * 0.25));
    state.pitch = Math.max(-25, Math.min(25, start.pitch + (event.clientY - start.y) * 0.2));
    $("camera").textContent = `camera: yaw ${state.yaw.toFixed(0)}°, pitch ${state.pitch.toFixed(0)}°`;
  });
  canvas.addEventListener("pointerup", () => {
    if (start) { start = null; fixedView(); }
  });
}

$("create").addEventListener("click", create);
$("turntable").addEventListener("click", turntable);
$("preset").addEventListener("change", () => fixedView());
dragging();
loadSamples().catch((error) => status(`the service is not answering: ${error.message}`, "error"));
