// cosession: a graphical session's desktop, drawn by noVNC (the npm package, served from /vendor).
//
// The session page's one websocket carries RFB in its binary messages and the JSON control
// protocol in its text messages (docs/protocol.md). This module gives noVNC a WebSocket-like
// channel over the binary side: noVNC speaks RFB to the gateway (security type None: the
// websocket is already signed in and authorised) and draws the desktop on its canvas. It
// handles keyboard layouts, keysyms, the pointer, touch, scaling and Ctrl-Alt-Del, so none of
// that is written here. A viewer's noVNC is view-only, and the gateway refuses (and audits) any
// key, pointer or clipboard message from a viewer whatever the page does.
import RFB from "/vendor/@novnc/novnc/core/rfb.js";

export function openDesktop({ container, viewOnly, send, onConnect, onDesktopName }) {
  const channel = {
    binaryType: "arraybuffer",
    protocol: "",
    readyState: "open",
    onopen: null,
    onmessage: null,
    onclose: null,
    onerror: null,
    send(data) {
      send(data); // noVNC passes a view of its send buffer: WebSocket.send copies it at once
    },
    close() {
      // the page owns the websocket: noVNC's disconnect does not close it
    },
  };
  const rfb = new RFB(container, channel, { shared: true });
  rfb.viewOnly = viewOnly;
  rfb.scaleViewport = true; // the whole desktop, scaled to the window
  rfb.resizeSession = false; // the desktop's size is the endpoint's (or the launcher's), not the window's
  rfb.focusOnClick = !viewOnly;
  // The desktop's pointer is drawn into the frames where the controller put it (so viewers see
  // it); a dot shows this page's own pointer at once, before the drawn one follows it.
  rfb.showDotCursor = true;
  rfb.addEventListener("connect", () => onConnect && onConnect());
  rfb.addEventListener("desktopname", (e) => onDesktopName && onDesktopName(e.detail.name));
  return {
    rfb,
    receive(data) {
      if (channel.onmessage) channel.onmessage({ data });
    },
    closed() {
      channel.readyState = "closed";
      if (channel.onclose) channel.onclose({ code: 1000, reason: "", wasClean: true });
    },
    focus() {
      rfb.focus();
    },
  };
}
