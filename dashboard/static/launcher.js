// The Session Launcher's Access button, and Quick Access on endpoint rows.
//
// The session opens in a new tab or a new window, as the launcher's parameters say. The new
// tab or window is opened in the click itself (a browser blocks one opened later), blank; it is
// then sent to the one-time launch URL the gateway answers, or closed if the start is refused,
// and the refusal shows here. Nothing typed here goes into a URL.
(function () {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  function openTarget(openIn, width, height) {
    if (openIn === "window") {
      const w = Math.min(width || 1024, screen.availWidth), h = Math.min(height || 700, screen.availHeight);
      return window.open("about:blank", "", `popup,width=${w},height=${h}`);
    }
    return window.open("about:blank", "_blank");
  }

  const form = document.getElementById("launcher");
  if (form) {
    const error = document.getElementById("launcher-error");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      const data = Object.fromEntries(new FormData(form));
      delete data.csrf_token;
      const target = openTarget(data.open_in, Number(data.width) || Number(data.cols) * 9 + 40,
                                Number(data.height) || Number(data.rows) * 18 + 140);
      let answer;
      try {
        const response = await fetch(form.action, {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf },
          body: JSON.stringify(data),
        });
        answer = await response.json();
        if (!response.ok) throw new Error(answer.detail || answer.error || `error ${response.status}`);
      } catch (e) {
        if (target) target.close();
        error.textContent = `Not started: ${e.message}`;
        error.hidden = false;
        const token = form.querySelector('[name="mfa_token"]');
        if (token) token.value = "";  // a token is good once: the next try needs the next one
        return;
      }
      if (target) target.location.href = answer.url;
      else window.location.href = answer.url;  // no new window allowed: open it here
    });
  }

  // Quick Access on a row whose last parameters say "window": post the form into a popup.
  for (const quick of document.querySelectorAll("form.quick-access")) {
    quick.addEventListener("submit", () => {
      if (quick.dataset.openIn !== "window") return;
      const name = `cosession-${Date.now()}`;
      window.open("about:blank", name, "popup,width=1024,height=700");
      quick.target = name;
    });
  }
})();
