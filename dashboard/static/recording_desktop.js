// The desktop player (dashboard/pages/recordings.py): the gateway replays the recording as RFB
// over a websocket to the same noVNC client as a live session (desktop.js), view-only. Play,
// pause and speed are text messages on that websocket; a seek opens a new one at that time
// (the gateway starts it from the nearest keyframe). The timeline shows the audit markers.
import { openDesktop } from "./desktop.js";

const config = JSON.parse(document.getElementById("recording-config").textContent);
const $ = (id) => document.getElementById(id);
const state = { ws: null, desktop: null, playing: true, speed: 1, time: 0, ended: false, opened: 0, seeked: null };
window.cosessionReplay = state;

function showError(text) {
  $("player-error").textContent = text;
  $("player-error").hidden = false;
}

function clock(t) {
  const s = Math.max(0, Math.floor(t));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

function showTime(t) {
  state.time = t;
  $("clock").textContent = clock(t);
  if (!state.dragging) $("seek").value = String(t);
}

function control(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
}

function open(at) {
  if (state.ws) { state.ws.onclose = null; state.ws.close(); }
  if (state.desktop) state.desktop.closed();
  const container = $("desktop");
  container.textContent = "";
  state.ended = false;
  state.connected = false;
  const url = new URL(config.ws_url, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = new URLSearchParams({ at: String(at), play: state.playing ? "1" : "0", speed: String(state.speed) });
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  const desktop = openDesktop({
    container,
    viewOnly: true,
    send: (data) => { if (ws.readyState === WebSocket.OPEN) ws.send(data); },
    onConnect: () => { state.connected = true; },
  });
  desktop.rfb.focusOnClick = false;
  state.desktop = desktop;
  window.cosessionDesktop = desktop.rfb;
  state.opened += 1;
  showTime(at);
  ws.onmessage = (event) => {
    if (typeof event.data === "string") {
      const message = JSON.parse(event.data);
      if (message.type === "time") showTime(message.t);
      else if (message.type === "end") { showTime(message.t); state.ended = true; setPlaying(false, false); }
      else if (message.type === "error") showError(message.detail);
    } else {
      desktop.receive(event.data);
    }
  };
  ws.onclose = (event) => {
    if (state.ws !== ws) return;
    desktop.closed();
    if (!state.connected) showError("The recording could not be played (refused, or not what the audit log says: reload the page for the reason).");
  };
}

function setPlaying(playing, tell = true) {
  state.playing = playing;
  $("play").textContent = playing ? "Pause" : "Play";
  if (tell) control({ type: playing ? "play" : "pause" });
}

function seek(t) {
  state.seeked = t;
  open(Math.max(0, Math.min(t, config.duration)));
}

$("play").addEventListener("click", () => {
  if (!state.playing && state.ended) { state.playing = true; seek(0); setPlaying(true, false); return; }
  setPlaying(!state.playing);
});
$("speed").addEventListener("change", (event) => {
  state.speed = Number(event.target.value);
  control({ type: "speed", speed: state.speed });
});
$("seek").addEventListener("input", () => { state.dragging = true; });
$("seek").addEventListener("change", (event) => { state.dragging = false; seek(Number(event.target.value)); });
document.querySelectorAll("[data-marker-index]").forEach((button) => {
  button.addEventListener("click", () => seek(config.markers[Number(button.dataset.markerIndex)].time));
});

open(0);
