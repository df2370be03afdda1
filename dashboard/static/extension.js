// cosession: "Ask to extend" on the session page (templates/_session_extension.html). The
// controller of a session started under an approval asks an approver to move its end; the
// gateway answers JSON. When an approver approves, the engine moves the session's deadline and
// the page's countdown follows by itself (session.js); this script only asks and says what
// became of the question. Shown only to the controller, and only when the page's config names
// the approval (`approval_id`).
(function () {
  "use strict";

  const box = document.getElementById("session-extension");
  const configEl = document.getElementById("session-config");
  if (!box || !configEl) return;
  const config = JSON.parse(configEl.textContent);
  const form = document.getElementById("extension-form");
  const result = document.getElementById("extension-result");
  const until = document.getElementById("extension-until");
  const minutes = document.getElementById("extension-minutes");
  const reason = document.getElementById("extension-reason");
  const submit = document.getElementById("extension-submit");
  const pollMs = () => Number(box.dataset.pollMs) || 5000; // how often to look for the approver's decision
  let pollTimer = null;

  const live = () => window.cosession || {}; // session.js's state, once it runs
  const sessionId = () => live().sessionId || config.session_id || null;
  const approvalId = () => config.approval_id || live().approvalId || null;

  function isController() {
    const s = live();
    if (s.role) return s.role === "controller";
    return Boolean(config.you && config.controller && config.you.id === config.controller.id);
  }

  function refresh() {
    const s = live();
    box.hidden = !(approvalId() && sessionId() && isController() && !s.ended && !s.left);
    box.dataset.checked = "1";
  }

  function show(text, kind) {
    result.textContent = text;
    result.dataset.kind = kind;
    result.hidden = false;
  }

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function when(seconds) {
    return new Date(seconds * 1000).toLocaleString();
  }

  async function follow(extensionId) {
    // the approver's decision, for the message only: the deadline itself comes from the engine
    clearTimeout(pollTimer);
    try {
      const answer = await fetch(`/extensions/${encodeURIComponent(extensionId)}`, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      if (answer.ok) {
        const ext = (await answer.json()).extension;
        if (ext.state === "approved") {
          show(`Extension approved: the session now ends at ${when(ext.until)}.`, "ok");
          return;
        }
        if (ext.state === "denied") {
          show("Extension denied: the session still ends at its approval's end.", "error");
          return;
        }
        if (ext.state === "expired") {
          show("The extension was not decided before the approval ended.", "error");
          return;
        }
      }
    } catch (err) {
      // the gateway is away for a moment: ask again later
    }
    if (!live().ended) pollTimer = setTimeout(() => follow(extensionId), pollMs());
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const sid = sessionId();
    if (!sid) return;
    const body = { reason: reason.value };
    if (until.value) {
      // typed in this browser's time zone: send seconds since the epoch
      const at = new Date(until.value).getTime();
      if (Number.isNaN(at)) {
        show("The new end is not a date and time.", "error");
        return;
      }
      body.until = at / 1000;
    } else {
      body.minutes = minutes.value === "" ? null : Number(minutes.value);
    }
    submit.disabled = true;
    try {
      const answer = await fetch(`/sessions/${encodeURIComponent(sid)}/extension`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrfToken() },
        credentials: "same-origin",
        body: JSON.stringify(body),
      });
      let data = {};
      try {
        data = await answer.json();
      } catch (err) {
        data = {};
      }
      if (answer.ok) {
        show(data.message || "Asked: an approver will decide.", "ok");
        result.dataset.extensionId = data.extension.id;
        delete result.dataset.reason;
        reason.value = "";
        follow(data.extension.id);
      } else {
        show(data.message || `Not asked: ${data.detail || "the gateway refused"}.`, "error");
        result.dataset.reason = data.error || "";
      }
    } catch (err) {
      show("The gateway did not answer: try again.", "error");
    } finally {
      submit.disabled = false;
    }
  });

  refresh();
  setInterval(refresh, 1000); // the role and the session id arrive with the websocket's "joined"
})();
