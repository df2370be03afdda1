// cosession: live session lists (dashboard, endpoint page, Connections) and Terminate.
// One EventSource per page on the server's event stream (dashboard/live.py, docs/dashboard.md):
// "snapshot", "upsert" and "remove" events patch the rows in place; durations and countdowns
// tick here, once a second, against the server's clock.
(function () {
  "use strict";

  const ENDINGS = {
    controller_left: "ended by the controller",
    terminated: "terminated by an administrator",
    expired: "expired",
    abandoned: "abandoned (controller did not come back)",
    endpoint_failed: "endpoint failed",
    endpoint_closed: "closed by the endpoint",
    session_failed: "session failed",
    engine_stopped: "gateway stopped",
    gateway_restarted: "gateway restarted (ended when last seen)",
    hidden: "no longer visible to you",
  };

  const containers = Array.from(document.querySelectorAll("[data-live]"));
  const status = document.querySelector("[data-live-status]");
  let offsetMs = 0; // server clock minus this browser's clock

  function syncClock(serverNow) {
    if (typeof serverNow === "number") offsetMs = serverNow * 1000 - Date.now();
  }
  const first = containers.find((c) => c.dataset.serverNow);
  if (first) syncClock(parseFloat(first.dataset.serverNow));

  function duration(seconds) {
    const total = Math.max(0, Math.floor(seconds));
    const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return h ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
  }

  function tick() {
    const now = (Date.now() + offsetMs) / 1000;
    document.querySelectorAll("[data-since]").forEach((el) => {
      el.textContent = duration(now - parseFloat(el.dataset.since));
    });
    document.querySelectorAll("[data-until]").forEach((el) => {
      const left = parseFloat(el.dataset.until) - now;
      el.textContent = left > 0 ? duration(left) : "0:00";
      el.classList.toggle("soon", left < 300);
    });
  }

  function fragment(html) {
    const t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }

  function setStatus(text, state) {
    if (!status) return;
    status.textContent = text;
    status.dataset.state = state;
  }

  // --- the live list (dashboard, endpoint page) ---------------------------------------------------

  function listParts(c) {
    return { table: c.querySelector("table"), body: c.querySelector("[data-live-rows]"),
             empty: c.querySelector("[data-live-empty]") };
  }

  function showEmpty(c) {
    const { table, body, empty } = listParts(c);
    const none = body.children.length === 0;
    table.hidden = none;
    if (empty) empty.hidden = !none;
  }

  function listSnapshot(c, rows) {
    const { body } = listParts(c);
    body.replaceChildren(...rows.map((r) => fragment(r.html)));
    showEmpty(c);
  }

  function listUpsert(c, row) {
    const { body } = listParts(c);
    const el = fragment(row.html);
    const old = body.querySelector(`tr[data-session-id="${CSS.escape(row.id)}"]`);
    if (old) {
      old.replaceWith(el);
    } else {
      window.cosessionLive.firstSeen[row.id] = Date.now(); // for tests: when it appeared here
      // newest first
      const later = Array.from(body.children).find((tr) => parseFloat(tr.dataset.started) < row.started_at);
      body.insertBefore(el, later || null);
    }
    showEmpty(c);
  }

  function listRemove(c, id) {
    const { body } = listParts(c);
    const old = body.querySelector(`tr[data-session-id="${CSS.escape(id)}"]`);
    if (old) old.remove();
    showEmpty(c);
  }

  // --- the history tables (Connections): live rows are patched, ended ones marked -------------------

  function historyRow(c, id) {
    return c.querySelector(`tr[data-live-row][data-session-id="${CSS.escape(id)}"]`);
  }

  const knownIds = new Set(); // live sessions the stream has told of: any other is a new one

  function historyPatch(c, row) {
    const isNew = !knownIds.has(row.id);
    knownIds.add(row.id);
    const tr = historyRow(c, row.id);
    if (!tr) {
      if (isNew && !row.seen) noteNewSession(c);
      return;
    }
    const viewers = tr.querySelector("[data-field=viewers]");
    viewers.dataset.count = row.viewer_count;
    viewers.querySelector("[data-testid=viewers]").textContent =
      row.viewer_count + (row.viewers.length ? ": " + row.viewers.join(", ") : "");
    const label = row.expiring && row.state === "active" ? "expiring" : row.state;
    const state = tr.querySelector("[data-field=state] [data-testid=state]");
    state.textContent = label;
    state.className = `state state-${label}`;
    tr.dataset.state = row.state;
  }

  function historyEnd(c, id, reason, by) {
    const tr = historyRow(c, id);
    if (!tr) return;
    delete tr.dataset.liveRow;
    tr.dataset.state = "ended";
    const since = tr.querySelector("[data-since]");
    if (since) since.removeAttribute("data-since");
    const cell = tr.querySelector("[data-field=state]");
    cell.replaceChildren();
    const state = document.createElement("span");
    state.className = "state state-ended";
    state.dataset.testid = "state";
    state.textContent = "ended";
    const why = document.createElement("span");
    why.className = "muted end-reason";
    why.dataset.testid = "end-reason";
    why.dataset.reason = reason;
    why.textContent = (ENDINGS[reason] || reason) + (by ? ` (${by})` : "");
    cell.append(state, " ", why);
    tr.querySelector("[data-field=actions]").replaceChildren();
  }

  function noteNewSession(c) {
    if (c.querySelector("[data-live-new]")) return;
    const p = document.createElement("p");
    p.className = "flash";
    p.dataset.liveNew = "";
    p.dataset.testid = "new-sessions";
    p.append("Sessions have started since this page was loaded. ");
    const a = document.createElement("a");
    a.href = window.location.href;
    a.textContent = "Reload";
    p.append(a);
    c.prepend(p);
  }

  // --- the stream ----------------------------------------------------------------------------------

  function dispatch(kind, data) {
    syncClock(data.now);
    for (const c of containers) {
      if (c.dataset.live === "list") {
        if (kind === "snapshot") listSnapshot(c, data.rows);
        else if (kind === "upsert") listUpsert(c, data.row);
        else if (kind === "remove") listRemove(c, data.id);
      } else if (c.dataset.live === "history") {
        if (kind === "snapshot") data.rows.forEach((r) => historyPatch(c, { ...r, seen: true }));
        else if (kind === "upsert") historyPatch(c, data.row);
        else if (kind === "remove") historyEnd(c, data.id, data.reason, data.by);
      }
    }
    tick();
  }

  const source = containers.map((c) => c.dataset.eventsUrl).find((u) => u);
  window.cosessionLive = { events: 0, snapshots: 0, connected: false, firstSeen: {} };
  if (source && window.EventSource) {
    const events = new EventSource(source);
    for (const kind of ["snapshot", "upsert", "remove"]) {
      events.addEventListener(kind, (ev) => {
        window.cosessionLive.events += 1;
        if (kind === "snapshot") {
          window.cosessionLive.snapshots += 1;
          window.cosessionLive.connected = true;
          setStatus("live", "live");
        }
        dispatch(kind, JSON.parse(ev.data));
      });
    }
    events.addEventListener("error", () => {
      window.cosessionLive.connected = false;
      if (events.readyState === EventSource.CLOSED) setStatus("updates stopped: reload the page", "stopped");
      else setStatus("reconnecting…", "reconnecting");
    });
  } else if (status) {
    status.hidden = true;
  }

  tick();
  setInterval(tick, 1000);

  // --- Terminate -----------------------------------------------------------------------------------

  function toast(message, kind) {
    const main = document.querySelector("main");
    let p = document.querySelector("[data-testid=toast]");
    if (!p) {
      p = document.createElement("p");
      p.setAttribute("role", "status");
      p.dataset.testid = "toast";
      main.prepend(p);
    }
    p.className = kind === "error" ? "error" : "flash";
    p.textContent = message;
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target.closest("form.terminate-form");
    if (!form) return;
    ev.preventDefault();
    if (!window.confirm(form.dataset.confirm)) return;
    form.elements.confirmed.value = "yes";
    const button = form.querySelector("button");
    button.disabled = true;
    button.textContent = "Terminating…";
    let answer;
    try {
      answer = await fetch(form.action, {
        method: "POST", credentials: "same-origin", headers: { Accept: "application/json" },
        body: new URLSearchParams(new FormData(form)),
      });
    } catch (e) {
      form.submit(); // no network answer: the plain form (already confirmed), which redirects back
      return;
    }
    const body = await answer.json().catch(() => ({}));
    toast(body.message || (answer.ok ? "Terminated." : `Not terminated (${answer.status}).`),
          answer.ok ? "ok" : "error");
    if (answer.ok || answer.status === 404 || answer.status === 409) {
      // the stream removes the row too; this covers a page whose stream is down
      const id = form.closest("tr") && form.closest("tr").dataset.sessionId;
      if (id) containers.forEach((c) => c.dataset.live === "list" ? listRemove(c, id)
        : historyEnd(c, id, answer.ok ? "terminated" : "session_ended", null));
    } else {
      button.disabled = false;
      button.textContent = "Terminate";
    }
  });
})();
