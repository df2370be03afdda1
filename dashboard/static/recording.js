// The recording player page (dashboard/pages/recordings.py): asciinema-player plays the
// session's .cast; its timeline shows the audit markers, and the list below seeks to them.
(() => {
  "use strict";
  const config = JSON.parse(document.getElementById("recording-config").textContent);
  const el = document.getElementById("player");
  const state = { player: null, speed: 1, seeked: null };
  window.cosessionReplay = state;

  function showError(text) {
    const p = document.getElementById("player-error");
    p.textContent = text;
    p.hidden = false;
  }

  function create(startAt) {
    if (state.player) state.player.dispose();
    el.replaceChildren();
    state.player = AsciinemaPlayer.create(config.cast_url, el, {
      cols: config.cols,
      rows: config.rows,
      fit: "width",
      speed: state.speed,
      preload: true,
    });
    state.player.addEventListener("error", () => showError("The recording could not be played."));
    // where it was: seeking renders that moment (a start time alone shows nothing until played)
    if (startAt > 0) state.player.seek(startAt).catch(() => showError("Seeking failed."));
  }

  async function seekTo(index) {
    const player = state.player;
    await player.pause();
    await player.seek({ marker: index });
    state.seeked = { marker: index, time: player.getCurrentTime() };
  }

  document.querySelectorAll("[data-marker-index]").forEach((button) => {
    button.addEventListener("click", () => {
      seekTo(Number(button.dataset.markerIndex)).catch(() => showError("Seeking failed."));
    });
  });
  document.getElementById("speed").addEventListener("change", (event) => {
    const at = state.player ? state.player.getCurrentTime() : 0;
    state.speed = Number(event.target.value);
    create(at || 0);
  });

  create(0);
})();
