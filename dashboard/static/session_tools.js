// cosession: the session page's in-session toolbar, its chat and the pointer (docs/dashboard.md).
// It rides on session.js: its websocket (`cosession.send`) and every control message
// (`cosession.hooks`). What a viewer may not do is neither shown here nor accepted by the
// gateway, which decides every message again.
(function () {
  "use strict";

  const session = window.cosession;
  if (!session) return;
  const $ = (id) => document.getElementById(id);

  const AUTO_CLOSE_MS = 5000; // an opened toolbar the pointer never entered closes by itself
  const POINTER_SHOW_MS = 4000; // how long everyone sees a pointer
  const CHAT_MAX = 500; // the gateway's bound (engine/policy.py CHAT_MAX_CHARS)

  const dock = $("toolbar-dock");
  const bar = $("toolbar");
  const handle = $("toolbar-handle");
  let autoClose = null;

  // --- the toolbar -------------------------------------------------------------------------------

  function openToolbar() {
    bar.hidden = false;
    handle.setAttribute("aria-expanded", "true");
    dock.dataset.open = "1";
    clearTimeout(autoClose);
    autoClose = setTimeout(closeToolbar, AUTO_CLOSE_MS);
  }

  function closeToolbar() {
    clearTimeout(autoClose);
    autoClose = null;
    bar.hidden = true;
    handle.setAttribute("aria-expanded", "false");
    delete dock.dataset.open;
  }

  handle.addEventListener("click", () => (bar.hidden ? openToolbar() : closeToolbar()));
  $("toolbar-close").addEventListener("click", closeToolbar);
  // once the pointer has been inside, the toolbar stays until Close (or the handle)
  bar.addEventListener("pointerenter", () => {
    clearTimeout(autoClose);
    autoClose = null;
  });

  function status(text) {
    const el = $("toolbar-status");
    el.textContent = text;
    el.hidden = !text;
  }

  function showForRole(role) {
    dock.hidden = false;
    for (const el of bar.querySelectorAll("[data-for]")) {
      el.hidden = el.dataset.for !== role || ("graphical" in el.dataset && !session.graphical);
    }
    $("toolbar-disconnect").textContent = role === "controller" ? "Disconnect" : "Leave";
    $("toolbar-disconnect").title = role === "controller" ? "End this session for everyone" : "Leave this session";
    renderExpiration();
  }

  // Expiration: only for a session with an end (an approved session, rule 7)
  function renderExpiration() {
    const item = $("toolbar-expiration");
    item.hidden = !session.deadline || session.ended;
    if (item.hidden) return;
    const left = session.deadline - (Date.now() / 1000 + session.clockOffset);
    const s = Math.max(0, Math.round(left));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    $("toolbar-countdown").textContent = h ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}`
      : `${m}:${String(r).padStart(2, "0")}`;
    // Extend opens "Ask to extend" (extension.js), which exists only for the controller of an approval
    $("toolbar-extend").hidden = session.role !== "controller" || !$("session-extension") ||
      $("session-extension").hidden;
  }
  setInterval(renderExpiration, 1000);

  $("toolbar-extend").addEventListener("click", () => {
    const box = $("session-extension");
    box.scrollIntoView({ block: "nearest" });
    const reason = $("extension-reason");
    if (reason) reason.focus();
  });

  $("toolbar-url").addEventListener("click", async () => {
    const url = session.shareUrl;
    if (!url) return;
    try {
      await navigator.clipboard.writeText(url);
      status("Session URL copied: it opens the join dialog.");
    } catch (e) {
      status(`Copy this link: ${url}`);
    }
    $("toolbar-url").dataset.url = url;
  });

  $("toolbar-disconnect").addEventListener("click", () => {
    if (session.role === "controller" && !window.confirm("End this session for everyone?")) return;
    session.leave();
    closeToolbar();
    setPointing(false);
    $("chat-form").hidden = true;
    $("files").hidden = true;
    $("osk").hidden = true;
    dock.hidden = true; // left: nothing here acts on the session any more
  });

  // --- clipboard upload: the controller's clipboard text into the session --------------------
  // A terminal's paste goes to the gateway as one `paste` message, which the access profile's
  // clipboard upload allows or refuses (with the reason) at each use, and audits with its size;
  // a desktop's goes through noVNC's RFB clipboard, which the gateway decides the same way.

  function pasteText(text) {
    if (!text || session.role !== "controller") return;
    if (session.graphical) {
      if (window.cosessionDesktop) window.cosessionDesktop.clipboardPasteFrom(text);
      return;
    }
    const term = window.cosessionTerminal;
    session.send({ type: "paste", text, bracketed: Boolean(term && term.modes.bracketedPasteMode) });
  }

  $("toolbar-paste").addEventListener("click", async () => {
    let text;
    try {
      text = await navigator.clipboard.readText();
    } catch (e) {
      status("The browser did not allow reading the clipboard.");
      return;
    }
    if (!text) status("The clipboard holds no text.");
    pasteText(text);
  });

  // --- clipboard download: the desktop's clipboard text to the controller -------------------------
  // The gateway says when it changed (its size, never its text); Copy remote clipboard asks for
  // it, and the access profile's clipboard download allows or refuses (with the reason) at each
  // use. The text shows in the toolbar too: the browser may refuse a write outside a click.

  $("toolbar-copy").addEventListener("click", () => {
    if (session.role === "controller") session.send({ type: "copy_clipboard" });
  });

  function remoteClipboardChanged(size) {
    const button = $("toolbar-copy");
    button.dataset.size = String(size);
    button.textContent = `Copy remote clipboard (${size})`;
  }

  async function remoteClipboard(text) {
    const box = $("toolbar-remote-text");
    box.value = text;
    box.hidden = !text;
    if (!text) {
      status("The remote clipboard is empty.");
      return;
    }
    try {
      await navigator.clipboard.writeText(text);
      status(`Copied ${text.length} characters from the remote clipboard.`);
    } catch (e) {
      status("The browser did not allow the clipboard: copy the text below.");
      box.select();
    }
  }

  // The browser's own paste on the terminal takes the same path (never straight into xterm.js)
  $("terminal").addEventListener("paste", (event) => {
    event.preventDefault();
    event.stopPropagation();
    if (session.role === "controller") pasteText(event.clipboardData.getData("text/plain"));
  }, true);

  // Send Password: the same as the bar's button (session.js, which labels both with its state)
  $("toolbar-password").addEventListener("click", () => $("send-password").click());

  // Ctrl-Alt-Del: keys pressed on this computer never reach the page (an RDP server's secure
  // attention sequence: lock, sign out, task manager), so noVNC sends the three as RFB key events
  // (the gateway forwards a controller's, refuses and audits a viewer's). The page's only one.
  $("toolbar-cad").addEventListener("click", () => {
    if (!window.cosessionDesktop || session.role !== "controller") return;
    window.cosessionDesktop.sendCtrlAltDel();
    window.cosessionDesktop.focus();
  });

  // --- Keyboard: an on-screen keyboard (simple-keyboard, its layouts package) ------------------
  // Its keys are the controller's input: into xterm.js as typed (the same path as the physical
  // keyboard), or to noVNC as key presses. A viewer's page does not offer it (and the gateway
  // refuses a viewer's input anyway).

  const KEYSYMS = { "{bksp}": 0xff08, "{enter}": 0xff0d, "{tab}": 0xff09, "{space}": 0x20, "{escape}": 0xff1b };
  const TERMINAL_KEYS = { "{bksp}": "\x7f", "{enter}": "\r", "{tab}": "\t", "{space}": " ", "{escape}": "\x1b" };
  let keyboard = null;
  let layouts = null;

  function keysym(ch) {
    const code = ch.codePointAt(0);
    return code < 0x100 ? code : 0x01000000 + code; // Latin-1 as is; the rest as Unicode keysyms
  }

  function pressKey(button) {
    if (session.role !== "controller") return;
    if (button === "{shift}" || button === "{lock}") {
      const next = keyboard.options.layoutName === "default" ? "shift" : "default";
      keyboard.setOptions({ layoutName: next });
      return;
    }
    if (button.startsWith("{") && !(button in TERMINAL_KEYS)) return; // a key this page does not send
    if (session.graphical) {
      const rfb = window.cosessionDesktop;
      if (!rfb) return;
      if (button in KEYSYMS) rfb.sendKey(KEYSYMS[button]);
      else for (const ch of button) rfb.sendKey(keysym(ch));
    } else if (window.cosessionTerminal) {
      window.cosessionTerminal.input(TERMINAL_KEYS[button] || button, true);
    }
    if (keyboard.options.layoutName === "shift") keyboard.setOptions({ layoutName: "default" });
  }

  function layoutOf(name) {
    const found = layouts.get(name);
    return { ...found.layout, default: [...found.layout.default], shift: [...(found.layout.shift || found.layout.default)] };
  }

  // The packages load on the first use only (their layouts are a large file)
  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`${src} did not load`));
      document.head.appendChild(script);
    });
  }

  let keyboardLoading = null;

  async function openKeyboard() {
    if (!keyboardLoading) {
      keyboardLoading = Promise.all([loadScript("/vendor/simple-keyboard/build/index.js"),
        loadScript("/vendor/simple-keyboard-layouts/build/index.js")]);
    }
    try {
      await keyboardLoading;
    } catch (e) {
      keyboardLoading = null;
      status(`The on-screen keyboard did not load: ${e.message}`);
      return;
    }
    if (!keyboard) {
      const Keyboard = window.SimpleKeyboard.default;
      const Layouts = window.SimpleKeyboardLayouts.default;
      layouts = new Layouts();
      const select = $("osk-layout");
      for (const name of Object.keys(layouts.layouts)) {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = name;
        select.appendChild(option);
      }
      select.value = "english";
      keyboard = new Keyboard($("osk-keys"), { layout: layoutOf("english"), layoutName: "default", onKeyPress: pressKey });
      select.addEventListener("change", () => keyboard.setOptions({ layout: layoutOf(select.value), layoutName: "default" }));
    }
    $("osk").hidden = false;
  }

  $("toolbar-keyboard").addEventListener("click", () => {
    const show = $("osk").hidden;
    if (show) openKeyboard();
    else $("osk").hidden = true;
    $("toolbar-keyboard").textContent = show ? "Hide Keyboard" : "Keyboard";
    $("toolbar-keyboard").setAttribute("aria-pressed", String(show));
  });

  // --- Files: the controller's file manager (SSH), over /sessions/{id}/files ------------------
  // The gateway decides every request (the controller, the profile's file transfer, SSH) and
  // audits every transfer with its path, size and SHA-256; this only shows the home folder.

  const files = $("files");
  const UPLOAD_CHUNK = 192 * 1024; // under the edge's request body limit
  let folder = ""; // relative to the home folder

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function filesUrl(op, params) {
    const base = `/sessions/${encodeURIComponent(session.sessionId)}/files${op ? "/" + op : ""}`;
    return `${base}?${new URLSearchParams(params)}`;
  }

  function filesStatus(text) {
    $("files-status").textContent = text;
  }

  async function filesAnswer(response) {
    let body = {};
    try {
      body = await response.json();
    } catch (e) {
      body = { detail: `the gateway answered ${response.status}` };
    }
    if (!response.ok) throw new Error(body.detail || body.error || String(response.status));
    return body;
  }

  function post(op, params, body) {
    return fetch(filesUrl(op, params), {
      method: "POST", credentials: "same-origin", body: body || null,
      headers: { "X-CSRF-Token": csrfToken(), "Content-Type": "application/octet-stream" },
    }).then(filesAnswer);
  }

  const join = (name) => (folder ? `${folder}/${name}` : name);

  function formatSize(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  }

  function renderPath() {
    const nav = $("files-path");
    nav.textContent = "";
    const parts = folder ? folder.split("/") : [];
    const crumbs = [["Home", ""], ...parts.map((p, i) => [p, parts.slice(0, i + 1).join("/")])];
    crumbs.forEach(([label, path], i) => {
      if (i) nav.append(" / ");
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.addEventListener("click", () => openFolder(path));
      nav.appendChild(b);
    });
  }

  async function openFolder(path) {
    folder = path;
    renderPath();
    const list = $("files-list");
    try {
      const answer = await fetch(filesUrl("", { path }), { credentials: "same-origin" }).then(filesAnswer);
      list.textContent = "";
      for (const entry of answer.entries) list.appendChild(fileRow(entry));
      if (!answer.entries.length) { // in the list: the status line keeps what the last action said
        const empty = document.createElement("li");
        empty.className = "files-empty";
        empty.setAttribute("data-testid", "files-empty");
        empty.textContent = "This folder is empty.";
        list.appendChild(empty);
      }
    } catch (e) {
      filesStatus(`Could not list this folder: ${e.message}`);
    }
  }

  function fileRow(entry) {
    const li = document.createElement("li");
    li.dataset.name = entry.name;
    const path = join(entry.name);
    if (entry.is_dir) {
      const open = document.createElement("button");
      open.type = "button";
      open.className = "folder file-name";
      open.textContent = `${entry.name}/`;
      open.addEventListener("click", () => openFolder(path));
      li.appendChild(open);
    } else {
      const name = document.createElement("span");
      name.className = "file-name";
      name.textContent = entry.name;
      const size = document.createElement("span");
      size.className = "file-size";
      size.textContent = formatSize(entry.size);
      const get = document.createElement("a");
      get.href = filesUrl("download", { path });
      get.download = entry.name;
      get.textContent = "Download";
      get.setAttribute("data-testid", "file-download");
      li.append(name, size, get);
    }
    const del = document.createElement("button");
    del.type = "button";
    del.className = "small";
    del.textContent = "Delete";
    del.setAttribute("aria-label", `Delete ${entry.name}`);
    del.addEventListener("click", async () => {
      if (!window.confirm(`Delete ${path} on the host?`)) return;
      try {
        await post("delete", { path });
        filesStatus(`Deleted ${path}.`);
      } catch (e) {
        filesStatus(`Not deleted: ${e.message}`);
      }
      openFolder(folder);
    });
    li.appendChild(del);
    return li;
  }

  async function uploadFile(file) {
    const path = join(file.name);
    const progress = $("files-progress");
    progress.hidden = false;
    progress.value = 0;
    try {
      let answer = null;
      for (let offset = 0; offset < file.size || (offset === 0 && !answer); offset += UPLOAD_CHUNK) {
        const chunk = file.slice(offset, offset + UPLOAD_CHUNK);
        answer = await post("upload", { path, offset, total: file.size }, chunk);
        progress.value = file.size ? Math.min(1, (offset + chunk.size) / file.size) : 1;
        filesStatus(`Uploading ${file.name}: ${Math.round(progress.value * 100)}%`);
        if (answer.done) break;
      }
      filesStatus(`Uploaded ${file.name} (${formatSize(answer.size)}, SHA-256 ${answer.sha256}).`);
      files.dataset.lastSha256 = answer.sha256;
    } catch (e) {
      filesStatus(`Upload failed: ${e.message}`);
    }
    progress.hidden = true;
    openFolder(folder);
  }

  $("files-upload").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (file) uploadFile(file);
  });

  $("files-mkdir").addEventListener("click", async () => {
    const name = (window.prompt("New folder name:", "") || "").trim();
    if (!name) return;
    try {
      await post("mkdir", { path: join(name) });
      filesStatus(`Made ${join(name)}.`);
    } catch (e) {
      filesStatus(`Not made: ${e.message}`);
    }
    openFolder(folder);
  });

  // Send Tool: a file of the administrators' library into the home folder (the same rights as Files)
  async function loadTools() {
    const choice = $("tool-choice");
    try {
      const answer = await fetch(`/sessions/${encodeURIComponent(session.sessionId)}/tools`,
        { credentials: "same-origin" }).then(filesAnswer);
      choice.textContent = "";
      for (const tool of answer.tools) {
        const option = document.createElement("option");
        option.value = tool.id;
        option.textContent = `${tool.name} (${tool.file_name}, ${formatSize(tool.size)})`;
        option.dataset.fileName = tool.file_name;
        choice.appendChild(option);
      }
      if (!answer.tools.length) {
        const none = document.createElement("option");
        none.value = "";
        none.textContent = "(no tools in the library)";
        choice.appendChild(none);
      }
      $("tool-send-button").disabled = !answer.tools.length;
    } catch (e) {
      filesStatus(`Could not list the tools: ${e.message}`);
    }
  }

  $("tool-send-button").addEventListener("click", async () => {
    const choice = $("tool-choice");
    const id = choice.value;
    if (!id) return;
    const label = choice.selectedOptions[0].textContent;
    filesStatus(`Sending ${label}…`);
    try {
      const answer = await fetch(`/sessions/${encodeURIComponent(session.sessionId)}/tools/${encodeURIComponent(id)}/send`,
        { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrfToken() } }).then(filesAnswer);
      filesStatus(`Sent ${answer.path} to your home folder (SHA-256 ${answer.sha256}).`);
      openFolder("");
    } catch (e) {
      filesStatus(`Tool not sent: ${e.message}`);
    }
  });

  function showFiles(open) {
    files.hidden = !open;
    if (open) {
      openFolder(folder);
      loadTools();
    }
  }

  $("toolbar-files").addEventListener("click", () => showFiles(files.hidden));
  $("toolbar-send-tool").addEventListener("click", () => {
    showFiles(true);
    $("tool-choice").focus();
  });
  $("files-close").addEventListener("click", () => showFiles(false));

  function offerFiles() {
    const offer = config().files;
    for (const [id, title] of [["toolbar-files", "Transfer files to and from your home folder on the host"],
      ["toolbar-send-tool", "Put a tool from the library into your home folder on the host"]]) {
      const button = $(id);
      if (!offer || session.role !== "controller") {
        button.hidden = true;
        continue;
      }
      button.disabled = !offer.allowed;
      button.title = offer.allowed ? title : offer.reason;
      button.dataset.reason = offer.reason || "";
    }
  }

  function config() {
    return JSON.parse(document.getElementById("session-config").textContent);
  }

  // --- chat ------------------------------------------------------------------------------------

  const chat = $("chat");
  let unread = 0;

  function toggleChat(open) {
    chat.hidden = !open;
    if (open) {
      unread = 0;
      $("chat-unread").hidden = true;
      $("chat-text").focus();
    }
  }

  $("toolbar-chat").addEventListener("click", () => toggleChat(chat.hidden));
  $("chat-close").addEventListener("click", () => toggleChat(false));
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("chat-text");
    const text = input.value.trim().slice(0, CHAT_MAX);
    if (!text) return;
    session.send({ type: "chat", text });
    input.value = "";
  });

  function timeOf(at) {
    return new Date(at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function addChat(m) {
    const li = document.createElement("li");
    li.dataset.participant = m.from.participant_id;
    if (m.from.participant_id === session.participantId) li.className = "mine";
    const who = document.createElement("span");
    who.className = "chat-who";
    who.textContent = m.from.user.name; // text nodes only: a message is never HTML
    const when = document.createElement("time");
    when.className = "chat-time";
    when.dateTime = new Date(m.at * 1000).toISOString();
    when.textContent = timeOf(m.at);
    const text = document.createElement("span");
    text.className = "chat-text";
    text.textContent = m.text;
    li.append(who, when, text);
    $("chat-log").appendChild(li);
    li.scrollIntoView({ block: "nearest" });
    if (chat.hidden) {
      unread += 1;
      $("chat-unread").textContent = String(unread);
      $("chat-unread").hidden = false;
    }
  }

  function chatRefused(m) {
    const li = document.createElement("li");
    li.className = "chat-refused";
    li.dataset.reason = m.reason;
    li.textContent = `Not sent: ${session.reasonText(m.reason, m.detail)}`;
    $("chat-log").appendChild(li);
    toggleChat(true);
  }

  // --- the pointer -----------------------------------------------------------------------------

  let pointing = false;
  const layer = document.createElement("div"); // catches the click that points, over the screen
  layer.className = "point-layer";
  layer.dataset.testid = "point-layer";
  layer.setAttribute("data-testid", "point-layer");
  layer.hidden = true;
  $("stage").appendChild(layer);

  function setPointing(on) {
    pointing = on;
    layer.hidden = !on;
    $("toolbar-point").setAttribute("aria-pressed", String(on));
  }

  $("toolbar-point").addEventListener("click", () => setPointing(!pointing));

  // The rectangle of the remote screen on this page, and its grid for a terminal (cols × rows)
  function screenBox() {
    if (session.graphical) {
      const canvas = document.querySelector("#desktop canvas");
      return canvas ? { rect: canvas.getBoundingClientRect(), grid: null } : null;
    }
    const term = window.cosessionTerminal;
    const screen = document.querySelector("#terminal .xterm-screen");
    if (!term || !screen) return null;
    return { rect: screen.getBoundingClientRect(), grid: { cols: term.cols, rows: term.rows } };
  }

  layer.addEventListener("click", (event) => {
    setPointing(false);
    const box = screenBox();
    if (!box) return;
    let x = (event.clientX - box.rect.left) / box.rect.width;
    let y = (event.clientY - box.rect.top) / box.rect.height;
    if (!(x >= 0 && x <= 1 && y >= 0 && y <= 1)) return; // outside the screen
    if (box.grid) { // a terminal points at a cell: its centre, the same cell on every page
      x = (Math.min(box.grid.cols - 1, Math.floor(x * box.grid.cols)) + 0.5) / box.grid.cols;
      y = (Math.min(box.grid.rows - 1, Math.floor(y * box.grid.rows)) + 0.5) / box.grid.rows;
    }
    session.send({ type: "point", x, y });
  });

  const markers = new Map(); // participant id → its marker and the timer that removes it

  function showPointer(m) {
    const box = screenBox();
    if (!box) return;
    const stage = $("stage").getBoundingClientRect();
    const id = m.from.participant_id;
    const old = markers.get(id);
    if (old) {
      clearTimeout(old.timer);
      old.el.remove();
    }
    const el = document.createElement("div");
    el.className = "pointer";
    el.setAttribute("data-testid", "pointer");
    el.dataset.participant = id;
    let left, top;
    if (box.grid) {
      const cw = box.rect.width / box.grid.cols, ch = box.rect.height / box.grid.rows;
      const col = Math.floor(m.x * box.grid.cols), row = Math.floor(m.y * box.grid.rows);
      el.classList.add("pointer-cell");
      el.dataset.col = String(col);
      el.dataset.row = String(row);
      left = box.rect.left - stage.left + col * cw;
      top = box.rect.top - stage.top + row * ch;
      el.style.width = `${cw}px`;
      el.style.height = `${ch}px`;
    } else {
      el.classList.add("pointer-spot");
      left = box.rect.left - stage.left + m.x * box.rect.width;
      top = box.rect.top - stage.top + m.y * box.rect.height;
    }
    el.style.left = `${left}px`;
    el.style.top = `${top}px`;
    const label = document.createElement("span");
    label.className = "pointer-name";
    label.textContent = m.from.user.name;
    el.appendChild(label);
    $("pointers").appendChild(el);
    markers.set(id, { el, timer: setTimeout(() => { el.remove(); markers.delete(id); }, POINTER_SHOW_MS) });
  }

  // --- the session's messages --------------------------------------------------------------------

  session.hooks.push((m) => {
    switch (m.type) {
      case "joined":
        session.shareUrl = m.share_url;
        showForRole(m.role);
        offerFiles();
        $("toolbar-password").hidden = m.role !== "controller" || !config().send_password;
        break;
      case "state":
        renderExpiration();
        break;
      case "chat":
        addChat(m);
        break;
      case "point":
        showPointer(m);
        break;
      case "refused":
        if (m.of === "chat") chatRefused(m);
        // a desktop's paste is RFB input: its refusal names the reason, not the message
        else if (m.of === "paste" || m.reason === "clipboard_not_allowed") status(`Not pasted: ${session.reasonText(m.reason)}.`);
        else if (m.of === "copy_clipboard") status(`Not copied: ${session.reasonText(m.reason)}.`);
        break;
      case "remote_clipboard":
        remoteClipboardChanged(m.size);
        break;
      case "clipboard":
        remoteClipboard(m.text);
        break;
      case "pasted":
        status(`Pasted ${m.size} bytes.`);
        break;
      case "ended":
      case "ejected":
        closeToolbar();
        setPointing(false);
        $("chat-form").hidden = true;
        files.hidden = true;
        $("osk").hidden = true;
        $("toolbar-remote-text").value = "";
        dock.hidden = true;
        break;
      default:
        break;
    }
  });
})();
