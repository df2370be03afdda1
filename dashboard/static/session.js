// cosession: the session page. One websocket to the gateway (docs/protocol.md): binary messages
// are terminal data (bytes, never decoded here) or, for a graphical session, RFB between noVNC
// and the gateway (desktop.js); text messages are small JSON control messages. Only the
// controller's terminal or desktop sends anything to the endpoint; a viewer's has no input path.
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("session-config").textContent);
  const $ = (id) => document.getElementById(id);
  const encoder = new TextEncoder();
  const INPUT_CHUNK = 16384; // well under the gateway's max_message_bytes

  const REASONS = {
    viewer_cap: "This session already has the most viewers it may have",
    joint_session_disabled: "Joint sessions are turned off for this endpoint",
    protocol_not_shareable: "Sessions on this kind of endpoint cannot be shared",
    no_access: "You have no access to this endpoint",
    session_ended: "This session has ended",
    unknown_session: "There is no such session",
    not_controller: "Viewers are read-only",
    not_permitted: "Not permitted",
    control_not_transferable: "Control cannot be transferred: end this session and start a new one",
    endpoint_unavailable: "The endpoint is not available",
    malformed: "The gateway could not read a message from this page",
    too_large: "A message from this page was too large",
    unknown_message: "The gateway did not understand a message from this page",
    not_a_participant: "That viewer is no longer in this session",
    not_signed_in: "You are signed out: sign in again",
    credentials_required: "This endpoint needs a user name and a password or key",
    invalid_share_link: "This share link is not valid",
    unexpected_message: "Unexpected message",
    too_many_refusals: "Too many refused messages: the gateway closed the connection",
    timeout: "The gateway closed an idle connection",
    launch_expired: "This launch was used already or has expired: start again from the launcher",
    no_web_session: "Your access profile does not allow web sessions on this endpoint",
    approval_required: "This endpoint requires an approved request for access",
    approval_pending: "Your request for access awaits approval",
    approval_denied: "Your request for access was denied",
    approval_expired: "Your access window has ended",
    mfa_required: "A token from your authenticator is required",
    mfa_invalid: "Wrong token",
    mfa_reused: "This token was already used",
    not_supervisor: "Send Password needs at least the supervisor role",
    clipboard_not_allowed: "Your access profile does not allow clipboard upload",
    clipboard_download_not_allowed: "Your access profile does not allow clipboard download",
    no_stored_password: "This endpoint stores no password",
    too_many_joins: "You joined this session too often in a short time",
    too_many_messages: "Too many messages in a short time",
    internal_error: "Internal error in the gateway",
  };
  const ENDINGS = {
    controller_left: "The controller ended the session",
    terminated: "An administrator ended this session",
    expired: "The session's time ran out",
    abandoned: "The controller did not come back in time",
    endpoint_failed: "The connection to the endpoint failed",
    endpoint_closed: "The remote session closed",
    session_failed: "The session failed",
    engine_stopped: "The gateway stopped",
    gateway_restarted: "The gateway restarted",
  };

  const session = {
    role: null,
    participantId: null,
    you: config.you || null, // {id, name, admin}: the signed-in user (the joined message repeats it)
    pendingEject: null, // {participant_id, name} of the last eject sent, to word its refusal
    sessionId: config.session_id || null,
    members: new Map(),
    state: null,
    ended: false,
    fatal: false,
    left: false,
    joinedOnce: false,
    reconnects: 0,
    ws: null,
    inputRefusals: 0,
    size: null,
    timings: {}, // performance.now() of: connect, joined, keyframe (written to the terminal)
    deadline: null, // the session expires then (rule 7), seconds since the epoch
    clockOffset: 0, // the gateway's clock minus this machine's, in seconds
    graceUntil: null, // a disconnected controller may come back until then (rule 8)
  };
  session.hooks = []; // session_tools.js: called with each control message after this page handled it
  window.cosession = session; // for tests and the curious: state only, nothing secret
  const GRAPHICAL = ["vnc", "rdp"];
  session.graphical = GRAPHICAL.includes(config.endpoint && config.endpoint.protocol);

  // --- the desktop (graphical sessions): noVNC, loaded on the first join -----------------------

  let desktop = null; // desktop.js's handle for this websocket's RFB stream
  let desktopPending = []; // the gateway's RFB bytes that came before noVNC was ready
  let desktopOpening = null; // the websocket noVNC is being opened for

  function openDesktop(ws, viewOnly) {
    $("terminal-wrap").hidden = true;
    $("desktop-wrap").hidden = false;
    desktopOpening = ws;
    import(config.desktop_module).then(({ openDesktop: open }) => {
      if (session.ws !== ws || desktopOpening !== ws) return; // a newer websocket took over
      const container = $("desktop");
      container.textContent = "";
      desktop = open({
        container,
        viewOnly,
        send: (data) => { if (ws.readyState === WebSocket.OPEN) ws.send(data); },
        onConnect: () => { if (!session.timings.desktop) session.timings.desktop = performance.now(); },
      });
      window.cosessionDesktop = desktop.rfb;
      for (const data of desktopPending) desktop.receive(data);
      desktopPending = [];
      if (!viewOnly) desktop.focus();
    }).catch((e) => notice(`The desktop viewer did not load: ${e}`, "error", "desktop_failed"));
  }

  function closeDesktop() {
    if (desktop) desktop.closed();
    desktop = null;
    desktopPending = [];
    desktopOpening = null;
  }

  function desktopData(data) {
    if (desktop) desktop.receive(data);
    else desktopPending.push(data);
  }

  // --- the terminal ----------------------------------------------------------------------------

  const term = new Terminal({
    cursorBlink: true,
    disableStdin: true, // until the gateway says this page is the controller
    scrollback: 2000,
    fontFamily: '"DejaVu Sans Mono", ui-monospace, Menlo, Consolas, monospace',
    fontSize: 14,
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  window.cosessionTerminal = term;
  let opened = false;

  function openTerminal() {
    if (opened) return;
    $("terminal-wrap").hidden = false;
    term.open($("terminal"));
    opened = true;
  }

  // After the bytes already written: resize (a viewer follows the controller's PTY size).
  function resizeInOrder(cols, rows) {
    if (!cols || !rows) return;
    term.write(new Uint8Array(0), () => {
      if (term.cols !== cols || term.rows !== rows) term.resize(cols, rows);
    });
  }

  function proposedSize() {
    const dims = opened ? fit.proposeDimensions() : null;
    if (dims && dims.cols > 1 && dims.rows > 1) return { cols: dims.cols, rows: dims.rows };
    return { cols: term.cols, rows: term.rows };
  }

  // --- the page --------------------------------------------------------------------------------

  function reasonText(reason, detail) {
    const text = ENDINGS[reason] || REASONS[reason] || reason;
    return detail ? `${text}: ${detail}` : text;
  }

  function notice(text, kind, reason, of) {
    const el = $("notice");
    el.textContent = text;
    el.className = "notice " + (kind || "info");
    el.dataset.reason = reason || "";
    el.dataset.of = of || "";
    el.hidden = false;
  }

  function setState(state) {
    session.state = state;
    const el = $("state");
    el.textContent = state;
    el.dataset.state = state;
    el.className = "state state-" + state;
    document.querySelector(".session").dataset.state = state;
  }

  // --- countdowns: the session's expiry, a disconnected controller's grace period -------------

  function formatLeft(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const mm = String(m).padStart(h ? 2 : 1, "0"), ss = String(r).padStart(2, "0");
    return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
  }

  function renderCountdown() {
    const el = $("countdown");
    const now = Date.now() / 1000 + session.clockOffset;
    el.dataset.deadline = session.deadline || "";
    if (session.ended) {
      el.hidden = true;
    } else if (session.state === "disconnected" && session.graceUntil) {
      el.hidden = false;
      el.dataset.kind = "grace";
      el.textContent = `controller away: ends in ${formatLeft(session.graceUntil - now)}`;
    } else if (session.deadline) {
      el.hidden = false;
      el.dataset.kind = "deadline";
      el.textContent = `expires in ${formatLeft(session.deadline - now)}`;
    } else {
      el.hidden = true;
    }
  }
  setInterval(renderCountdown, 1000);

  // The controller, or an administrator in the session, may eject a viewer (never the controller:
  // control is not transferred, rule 6). The gateway and the engine decide; this only offers it.
  function canEject() {
    if (session.ended || session.fatal || session.left || !session.role) return false;
    return session.role === "controller" || Boolean(session.you && session.you.admin);
  }

  function renderMembers() {
    const list = $("viewers");
    list.textContent = "";
    let viewers = 0;
    const eject = canEject();
    for (const m of session.members.values()) {
      if (m.role === "controller") {
        $("controller").textContent = m.user.name;
        continue;
      }
      viewers += 1;
      const li = document.createElement("li");
      const you = m.participant_id === session.participantId;
      const name = document.createElement("span");
      name.className = "viewer-name";
      name.textContent = m.user.name + (you ? " (you)" : "");
      li.appendChild(name);
      li.dataset.participant = m.participant_id;
      li.dataset.name = m.user.name;
      if (eject && !you) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "eject";
        button.textContent = "Eject";
        button.title = `Remove ${m.user.name} from this session`;
        button.setAttribute("aria-label", `Eject ${m.user.name}`);
        button.setAttribute("data-testid", "eject");
        button.addEventListener("click", () => askEject(m));
        li.appendChild(button);
      }
      list.appendChild(li);
    }
    $("viewer-count").textContent = String(viewers);
  }

  const EJECT_REASON_MAX = 200; // a short reason: it is shown to the viewer and audited

  function askEject(member) {
    const answer = window.prompt(`Remove ${member.user.name} from this session? Reason (optional):`, "");
    if (answer === null) return; // cancelled
    const reason = answer.trim().slice(0, EJECT_REASON_MAX);
    session.pendingEject = { participant_id: member.participant_id, name: member.user.name };
    send({ type: "eject", participant_id: member.participant_id, reason });
  }

  function showRole(role) {
    const el = $("role");
    el.hidden = false;
    el.textContent = role === "controller" ? "you control this session" : "you are watching (read-only)";
    el.dataset.role = role;
    $("readonly-note").hidden = role !== "viewer";
    const leave = $("leave");
    leave.hidden = false;
    leave.textContent = role === "controller" ? "End session" : "Leave";
  }

  function showShare(url) {
    if (!url) return;
    $("share").hidden = false;
    $("share-url").value = url;
  }

  $("copy-share").addEventListener("click", () => {
    const input = $("share-url");
    input.select();
    if (navigator.clipboard) navigator.clipboard.writeText(input.value).catch(() => {});
  });

  $("leave").addEventListener("click", () => {
    if (session.role === "controller" && !window.confirm("End this session for everyone?")) return;
    session.leave();
  });

  // Send Password: the gateway decides (supervisor, a profile with clipboard upload; where the
  // endpoint requires approval, an open approved request) and audits each use; only the
  // controller's page offers it, and a viewer's request is refused. Its unlock workflow: the
  // button says what it will do (config.send_password, then `password_state` from the gateway):
  // Send Password, Request Access (the request screen, in a new tab) or Waiting for Approval
  // (the pending request); it turns back into Send Password once the request is approved.
  const PASSWORD_LABELS = { send: "Send Password", request: "Request Access", pending: "Waiting for Approval" };
  const PASSWORD_TITLES = {
    send: "Put the endpoint's stored password on your clipboard",
    request: "The endpoint requires an approved request for access to send its password: open the request screen",
    pending: "Your request for access awaits an approver's decision: open it",
  };

  function renderPassword(offer) {
    const before = config.send_password && config.send_password.state;
    config.send_password = offer || null;
    for (const id of ["send-password", "toolbar-password"]) {
      const button = $(id);
      if (!button) continue;
      button.hidden = !offer || session.role !== "controller";
      if (!offer) continue;
      button.textContent = PASSWORD_LABELS[offer.state];
      button.title = PASSWORD_TITLES[offer.state];
      button.dataset.state = offer.state;
    }
    if (offer && offer.state === "send" && before && before !== "send") {
      notice("Your request for access is approved: Send Password is available.", "info", "password_unlocked");
    }
  }
  session.renderPassword = renderPassword;

  $("send-password").addEventListener("click", () => {
    const offer = config.send_password;
    if (offer && offer.url && offer.state !== "send") window.open(offer.url, "_blank", "noopener");
    else send({ type: "send_password" });
  });

  async function copyPassword(password) {
    try {
      await navigator.clipboard.writeText(password);
      notice("The endpoint's password is on your clipboard.", "info", "password_copied");
    } catch (e) {
      notice("The browser did not allow the clipboard: the password was not copied.", "warn", "clipboard_refused");
    }
  }

  // --- the websocket ---------------------------------------------------------------------------

  function wsUrl(path) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${path}`;
  }

  function send(message) {
    const ws = session.ws;
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
  }
  session.send = send;
  session.leave = () => {
    session.left = true;
    send({ type: "leave" });
  };
  session.notice = notice;
  session.reasonText = reasonText;

  function connect(path, first) {
    const ws = new WebSocket(wsUrl(path));
    ws.binaryType = "arraybuffer";
    session.timings = { connect: performance.now() };
    let keyframeNext = false;
    session.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      ws.send(JSON.stringify(first()));
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string" && session.graphical) {
        if (session.ws === ws) desktopData(event.data);
        return;
      }
      if (typeof event.data !== "string") {
        if (keyframeNext) {
          keyframeNext = false;
          term.write(new Uint8Array(event.data), () => {
            if (!session.timings.keyframe) session.timings.keyframe = performance.now();
          });
        } else {
          term.write(new Uint8Array(event.data));
        }
        return;
      }
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      if (message.type === "joined") session.timings.joined = performance.now();
      if (message.type === "reset") keyframeNext = true;
      onControl(message);
      for (const hook of session.hooks) hook(message);
    };
    ws.onclose = () => {
      if (session.ws !== ws) return;
      session.ws = null;
      if (session.graphical) closeDesktop();
      if (session.ended || session.fatal || session.left) return;
      if (!opened) {
        // The gateway refuses a signed-out handshake with a plain 403, which a page cannot
        // read: ask whether we are still signed in before trying again.
        fetch("/api/me", { credentials: "same-origin" }).then((r) => r.status, () => 0).then((status) => {
          if (status === 401) {
            session.fatal = true;
            notice(REASONS.not_signed_in, "error", "not_signed_in");
          } else {
            lost();
          }
        });
        return;
      }
      lost();
    };
    const lost = () => {
      if (session.joinedOnce && session.reconnects < 5) {
        // a lost network: come back (a controller within its grace period stays controller)
        const delay = 500 * 2 ** session.reconnects;
        session.reconnects += 1;
        notice("Connection to the gateway lost; reconnecting…", "warn", "reconnecting");
        setTimeout(() => joinSession(), delay);
      } else if (!session.joinedOnce) {
        notice("Could not connect to the gateway.", "error", "connection_failed");
      } else {
        notice("Connection to the gateway lost.", "error", "connection_lost");
      }
    };
  }

  let controllerInput = false;

  function enableControllerInput() {
    // Registered only once the gateway has said this page is the controller.
    if (controllerInput) return;
    controllerInput = true;
    term.options.disableStdin = false;
    term.onData((data) => sendInput(encoder.encode(data)));
    term.onBinary((data) => {
      const bytes = new Uint8Array(data.length);
      for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
      sendInput(bytes);
    });
    term.onResize(({ cols, rows }) => send({ type: "resize", cols, rows }));
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(() => fit.fit(), 60);
    });
  }

  function sendInput(bytes) {
    const ws = session.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || session.role !== "controller") return;
    for (let i = 0; i < bytes.length; i += INPUT_CHUNK) ws.send(bytes.subarray(i, i + INPUT_CHUNK));
  }

  function onControl(m) {
    switch (m.type) {
      case "joined":
        session.joinedOnce = true;
        session.reconnects = 0;
        session.role = m.role;
        session.participantId = m.participant_id;
        session.sessionId = m.session_id;
        if (m.you) session.you = m.you;
        session.members = new Map(m.members.map((x) => [x.participant_id, x]));
        session.deadline = m.deadline;
        // countdowns are in the gateway's time (an injected clock in tests), not this machine's
        if (typeof m.now === "number") session.clockOffset = m.now - Date.now() / 1000;
        if (m.controller) $("controller").textContent = m.controller.name;
        $("viewer-cap").textContent = String(m.max_viewers);
        session.graphical = GRAPHICAL.includes(m.endpoint.protocol);
        if (session.graphical) openDesktop(session.ws, m.role !== "controller");
        else openTerminal();
        showRole(m.role);
        $("recorded").hidden = !m.recorded;
        showShare(m.share_url);
        setState(m.state);
        renderMembers();
        renderCountdown();
        $("notice").hidden = true;
        if (config.mode === "start" && history.replaceState) {
          // a reload now returns to this session (rule 8), and the URL is the one to share
          history.replaceState(null, "", m.session_url);
          config.mode = "session";
        }
        if (m.role === "controller" && session.graphical) {
          renderPassword(config.send_password);
        } else if (m.role === "controller") {
          enableControllerInput();
          if (!config.cols) fit.fit(); // a launch sets the size; after that, the window does
          send({ type: "resize", cols: term.cols, rows: term.rows });
          term.focus();
          renderPassword(config.send_password);
        }
        break;
      case "participant_joined":
        session.members.set(m.member.participant_id, m.member);
        renderMembers();
        break;
      case "participant_left":
        session.members.delete(m.member.participant_id);
        renderMembers();
        if (m.reason === "ejected") {
          const by = m.by ? ` by ${m.by.name}` : "";
          notice(`${m.member.user.name} was removed from this session${by}.`, "info", "participant_ejected");
        } else if (m.reason === "stalled") {
          notice(`${m.member.user.name} stopped receiving and was disconnected.`, "info", "participant_stalled");
        }
        break;
      case "state":
        if (typeof m.now === "number") session.clockOffset = m.now - Date.now() / 1000;
        session.deadline = m.deadline;
        session.graceUntil = m.grace_until;
        setState(m.state);
        renderCountdown();
        if (m.state === "disconnected" && session.role === "viewer") {
          notice("The controller is disconnected; the session waits for them to come back.", "warn", "disconnected");
        } else if (m.state === "active" && $("notice").dataset.reason === "disconnected") {
          $("notice").hidden = true;
        }
        break;
      case "reset":
        // the keyframe that follows starts with a terminal reset; a viewer takes the PTY's size
        if (session.role !== "controller") resizeInOrder(m.cols, m.rows);
        session.size = { cols: m.cols, rows: m.rows };
        break;
      case "size":
        session.size = { cols: m.cols, rows: m.rows };
        if (session.role !== "controller") resizeInOrder(m.cols, m.rows);
        break;
      case "resync":
        notice(`Fell behind: ${m.dropped} update(s) skipped, screen resynchronised.`, "info", "resync");
        break;
      case "reconnecting":
        notice(`The endpoint connection dropped; reconnecting (attempt ${m.attempt})…`, "warn", "reconnecting");
        break;
      case "ended": {
        session.ended = true;
        setState("ended");
        let text = reasonText(m.reason, m.detail);
        if (m.by && m.reason === "terminated") text = `An administrator, ${m.by.name}, ended this session`;
        else if (m.by && m.reason === "controller_left") text += ` (${m.by.name})`;
        notice(text + ".", m.reason === "endpoint_failed" || m.reason === "session_failed" ? "error" : "info", m.reason);
        $("leave").hidden = true;
        term.options.disableStdin = true;
        renderMembers(); // no more Eject buttons
        break;
      }
      case "ejected":
        // the gateway closes the websocket next; ended: the page does not reconnect
        session.ended = true;
        setState("ended");
        notice(`You were removed from this session by ${m.by ? m.by.name : "someone"}${m.reason ? ": " + m.reason : "."}`,
          "warn", "ejected");
        $("leave").hidden = true;
        $("readonly-note").hidden = true;
        term.options.disableStdin = true;
        renderMembers();
        break;
      case "refused":
        if (m.fatal) {
          session.fatal = true;
          if (!session.joinedOnce) setState("refused");
          notice(reasonText(m.reason, m.detail) + ".", "error", m.reason);
        } else if (m.of === "eject") {
          const who = session.pendingEject ? ` ${session.pendingEject.name}` : "";
          session.pendingEject = null;
          notice(`Could not eject${who}: ${reasonText(m.reason, m.detail)}.`, "warn", m.reason, "eject");
        } else if (m.of === "input" || m.reason === "not_controller") {
          session.inputRefusals += 1;
          notice("Read-only: your keystrokes are not sent to the endpoint.", "info", m.reason);
        } else {
          notice(reasonText(m.reason, m.detail) + ".", "warn", m.reason);
        }
        break;
      case "password":
        // Send Password: straight to the clipboard; never into the page, never kept
        copyPassword(m.password);
        break;
      case "password_state":
        renderPassword(m.offer);
        break;
      default:
        break; // pong, stream, or a newer gateway's message: nothing to show
    }
  }

  function joinSession() {
    if (!session.graphical) openTerminal();
    const path = `/ws/sessions/${encodeURIComponent(session.sessionId)}`;
    connect(path, () => ({ type: "join" }));
  }

  // --- the three ways into a session -----------------------------------------------------------

  if (config.mode === "start" && session.graphical) {
    // a desktop's size is the launcher's (asked of the server), not the window's
    connect(config.ws_url, () => ({ type: "start", launch: config.launch, cols: 80, rows: 24 }));
  } else if (config.mode === "start") {
    // opened by the Session Launcher: start with its one-time launch, at its terminal size
    openTerminal();
    if (config.cols && config.rows) term.resize(config.cols, config.rows);
    else fit.fit();
    const { cols, rows } = config.cols ? { cols: config.cols, rows: config.rows } : proposedSize();
    connect(config.ws_url, () => ({ type: "start", launch: config.launch, cols, rows }));
  } else if (config.mode === "join") {
    $("join-button").addEventListener("click", () => {
      // joining from a share link opens the session in a window of its own
      const win = window.open(config.session_url, "cosession-" + config.session_id);
      if (!win) {
        location.assign(config.session_url);
        return;
      }
      $("join-opened").hidden = false;
    });
  } else {
    joinSession();
  }
})();
