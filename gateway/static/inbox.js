// livetrack notifications inbox: the signed-in user's `user:{sub}` channel on /live, as a badge with the unread
// count and the latest notifications. Any page with app.js's LiveClient (a "livetrack:ready" event or
// window.livetrack) may include it. The LiveClient acks each notification event on arrival: the in-app receipt.
(() => {
  "use strict";

  /** The token's subject (its payload read, not verified: the server verifies it). */
  function subjectOf(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part)).sub || null;
    } catch (e) {
      return null;
    }
  }

  function token() {
    const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
    return m ? decodeURIComponent(m[1]) : localStorage.getItem("livetrack.token");
  }

  function render(box, inbox) {
    box.querySelector(".unread").textContent = String(inbox.unread);
    const list = box.querySelector("ul");
    list.replaceChildren(...inbox.items.slice(0, 8).map((n) => {
      const li = document.createElement("li");
      li.textContent = `${new Date(n.ts).toLocaleTimeString()} · ${n.title}${n.body ? ` – ${n.body}` : ""}`;
      li.dataset.read = String(n.read);
      return li;
    }));
  }

  function start({ live }) {
    const tok = token();
    const sub = tok && subjectOf(tok);
    if (!sub) return;
    const box = document.createElement("section");
    box.id = "inbox";
    box.innerHTML = '<h2>notifications <span class="unread">0</span></h2><button type="button">mark read</button><ul></ul>';
    (document.getElementById("panel") || document.body).appendChild(box);
    box.querySelector("button").addEventListener("click", () => {
      fetch(`/v1/users/${encodeURIComponent(sub)}/notifications/read`, {
        method: "POST", headers: { "Content-Type": "application/json", Authorization: `Bearer ${tok}` },
        body: JSON.stringify({ notification_id: "*" }),
      });
    });
    const onState = (msg) => msg && msg.type === "inbox" && render(box, msg.data);
    live.subscribe(`user:${sub}`, { onUpdate: onState, onSnapshot: (_channel, msg) => onState(msg) });
  }

  if (window.livetrack) start(window.livetrack);
  else document.addEventListener("livetrack:ready", (e) => start(e.detail), { once: true });
})();
