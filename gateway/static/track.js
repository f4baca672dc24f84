// livetrack tracking page: one order, served as /track/{order_id}#token=<the customer's token>.
// Every push on channel `order:{id}` carries the whole order view; the page draws the latest one it
// has (status badge, ETA, timeline, pickup and drop-off, the courier's pin gliding to each new
// position). First paint from the subscribe ack's snapshot, or from GET /v1/orders/{id} when the
// channel has none; after a dropped connection LiveClient (live.js) resumes with `since`.
/* global L, io */
(() => {
  "use strict";

  const GLIDE_MAX_MS = 1000; // the courier's pin glides to a new position in at most this long
  const REDUCED_MOTION = matchMedia("(prefers-reduced-motion: reduce)"); // then the pin jumps
  const ETA_REDRAW_MS = 10000; // the "arriving in N min" countdown is redrawn this often
  const FINAL = new Set(["DELIVERED", "FAILED", "CANCELLED"]);
  const STATUS_TEXT = {
    CREATED: "Order placed",
    CONFIRMED: "Confirmed",
    COURIER_ASSIGNED: "Courier assigned",
    PICKED_UP: "Picked up",
    OUT_FOR_DELIVERY: "On the way",
    ARRIVING: "Arriving",
    DELIVERED: "Delivered",
    FAILED: "Delivery failed",
    CANCELLED: "Cancelled",
  };
  const SOURCE_TEXT = { livetrack: "automatic" }; // what the pipeline decided (ARRIVING); other sources as sent
  const $ = (id) => document.getElementById(id);
  const { accessToken, makeMap, LiveClient } = window.livetrackLib;

  /** The order id of /track/{order_id}, or null. */
  function orderIdFromPath() {
    const m = location.pathname.match(/\/track\/([^/]+)\/?$/);
    if (!m) return null;
    try {
      return decodeURIComponent(m[1]);
    } catch {
      return null; // a malformed %-escape
    }
  }

  const statusText = (status) => STATUS_TEXT[status] ?? String(status ?? "").replaceAll("_", " ").toLowerCase();
  const clock = (ts) => new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const latLng = (p) => (p && Number.isFinite(p.lat) && Number.isFinite(p.lng) ? [p.lat, p.lng] : null);

  /** What the ETA line says for `view` at `now` (epoch ms): counts down from the view's eta_s. */
  function etaText(view, now) {
    if (view.status === "DELIVERED") return `Delivered at ${clock(view.updated_ts)}`;
    if (FINAL.has(view.status)) return "";
    if (!Number.isFinite(view.eta_s)) return view.courier ? "" : "Arrival time once a courier is on the way";
    const elapsedS = Number.isFinite(view.updated_ts) ? Math.max(0, (now - view.updated_ts) / 1000) : 0;
    const remainingS = Math.max(0, view.eta_s - elapsedS);
    if (view.status === "ARRIVING" || remainingS < 60) return "Arriving in less than a minute";
    const minutes = Math.ceil(remainingS / 60);
    return `Arriving in ${minutes} min`;
  }

  /** A map pin drawn by CSS (class `pin-<kind>`), with a name for assistive technology. */
  function pin(kind, label) {
    const html = `<span class="pin pin-${kind}" role="img" aria-label="${label}"></span>`;
    return L.divIcon({ className: "pin-box", html, iconSize: [24, 24], iconAnchor: [12, 12] });
  }

  /** A marker that glides to each new position instead of jumping (requestAnimationFrame). */
  class Glider {
    constructor(map, at, icon, title) {
      this.marker = L.marker(at, { icon, title, keyboard: false, zIndexOffset: 1000 }).addTo(map);
      this.frame = 0;
      this.movedAt = performance.now();
    }

    moveTo(target) {
      cancelAnimationFrame(this.frame);
      const from = this.marker.getLatLng();
      const to = L.latLng(target);
      const now = performance.now();
      // As long as the time since the last move (pings every second or so), so the pin never stops.
      const duration = REDUCED_MOTION.matches ? 0 : Math.min(GLIDE_MAX_MS, now - this.movedAt);
      this.movedAt = now;
      const step = (t) => {
        const k = duration > 0 ? Math.min(1, (t - now) / duration) : 1;
        const eased = k * (2 - k); // ease out
        this.marker.setLatLng([from.lat + (to.lat - from.lat) * eased, from.lng + (to.lng - from.lng) * eased]);
        if (k < 1) this.frame = requestAnimationFrame(step);
      };
      this.frame = requestAnimationFrame(step);
      this.target = to;
    }

    remove() {
      cancelAnimationFrame(this.frame);
      this.marker.remove();
    }
  }

  /** The order on the page: the latest view it was given, drawn on the map and in the card. */
  class Tracker {
    constructor(map, orderId) {
      this.map = map;
      this.orderId = orderId;
      this.view = null;
      this.ends = {}; // "pickup" | "dropoff" -> marker
      this.courier = null; // Glider
      this.framed = false;
    }

    /** Draw `view` (an order view); from the channel always (LiveClient orders it), from GET only if newer. */
    show(view, fromChannel = true) {
      if (!view || view.order_id !== this.orderId) return false;
      if (!fromChannel && this.view && !(view.version > this.view.version)) return false;
      this.view = view;
      this.drawCard(view);
      this.drawMap(view);
      return true;
    }

    drawCard(view) {
      const badge = $("status");
      badge.dataset.status = view.status;
      badge.textContent = statusText(view.status);
      $("details").hidden = false;
      document.title = `${statusText(view.status)} · order ${view.order_id} · livetrack`;
      this.drawEta(Date.now());
      drawTimeline(view.timeline || []);
      $("updated").textContent = Number.isFinite(view.updated_ts) ? `Updated ${clock(view.updated_ts)}` : "";
    }

    drawEta(now) {
      if (!this.view) return;
      const text = etaText(this.view, now);
      const eta = $("eta");
      if (eta.textContent !== text) eta.textContent = text;
      eta.hidden = !text;
    }

    drawMap(view) {
      this.placeEnd("pickup", latLng(view.pickup), "Pickup");
      this.placeEnd("dropoff", latLng(view.dropoff), "Delivery address");
      this.drawRoute(latLng(view.pickup), latLng(view.dropoff));
      const at = FINAL.has(view.status) ? null : latLng(view.courier);
      if (at && this.courier) {
        this.courier.moveTo(at);
      } else if (at) {
        this.courier = new Glider(this.map, at, pin("courier", "Courier"), "Courier");
      } else if (this.courier) {
        this.courier.remove();
        this.courier = null;
      }
      if (!this.framed) this.frame();
    }

    placeEnd(kind, at, label) {
      if (!at) return;
      if (this.ends[kind]) {
        this.ends[kind].setLatLng(at);
      } else {
        this.ends[kind] = L.marker(at, { icon: pin(kind, label), title: label, keyboard: false }).addTo(this.map);
      }
    }

    drawRoute(from, to) {
      if (!from || !to || this.route) return;
      this.route = L.polyline([from, to], { className: "route", weight: 3, dashArray: "6 8", interactive: false })
        .addTo(this.map);
    }

    /** Fit the map to the pickup, drop-off and courier, once. */
    frame() {
      const points = [...Object.values(this.ends).map((m) => m.getLatLng())];
      if (this.courier) points.push(this.courier.marker.getLatLng());
      if (!points.length) return;
      this.map.fitBounds(L.latLngBounds(points).pad(0.25), { maxZoom: 16, animate: false });
      this.framed = true;
    }

    /** Where the courier's pin is heading (its latest position), or null. */
    courierTarget() {
      const at = this.courier?.target ?? this.courier?.marker.getLatLng();
      return at ? { lat: at.lat, lng: at.lng } : null;
    }
  }

  /** The timeline as a list, oldest first, built from text nodes (reasons and sources come from other systems). */
  function drawTimeline(entries) {
    const items = entries.map((entry) => {
      const li = document.createElement("li");
      li.dataset.status = entry.status;
      const label = document.createElement("span");
      label.className = "step";
      label.textContent = statusText(entry.status);
      const time = document.createElement("time");
      if (Number.isFinite(entry.ts)) {
        time.dateTime = new Date(entry.ts).toISOString();
        time.textContent = clock(entry.ts);
      }
      li.append(label, " ", time);
      const source = SOURCE_TEXT[entry.source] ?? entry.source;
      if (source) li.append(Object.assign(document.createElement("span"), { className: "source", textContent: source }));
      if (entry.late) {
        li.classList.add("late");
        li.append(Object.assign(document.createElement("span"), { className: "late-note", textContent: "reported late" }));
      }
      return li;
    });
    $("timeline").replaceChildren(...items);
  }

  /** The card's message for what stops the page (title, detail); the map stays as it was. */
  const notice = {
    show(title, detail = "") {
      $("notice-title").textContent = title;
      $("notice-detail").textContent = detail;
      $("notice").hidden = false;
      if (!page.tracker.view) {
        $("status").dataset.status = "UNAVAILABLE";
        $("status").textContent = "Not available";
      }
    },
    clear() {
      $("notice").hidden = true;
    },
  };

  const CONNECTION_TEXT = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…", offline: "Offline" };

  function connection(state) {
    $("conn").dataset.state = state;
    $("conn").textContent = CONNECTION_TEXT[state] ?? state;
  }

  /** Why a GET of the order failed, in the customer's words. */
  function refusal(status, orderId) {
    if (status === 401) return ["This tracking link has expired or is not valid.", "Open the latest link from your order confirmation."];
    if (status === 403) return ["This tracking link is for another order.", `It cannot show order ${orderId}.`];
    if (status === 404) return ["We cannot find this order.", `No order ${orderId} is known yet.`];
    return ["The order cannot be shown right now.", `The server answered ${status}; the page keeps trying.`];
  }

  /** A GET's body as an order view: GET answers in the legacy platform's shape (id, updated_at,
   * courier_id and courier_position, timeline times as `at`), plus version, ETA and timeline. */
  function asView(body) {
    if (!body || body.order_id) return body;
    const ms = (iso) => (iso ? Date.parse(iso) : null);
    const at = body.courier_position;
    return {
      order_id: body.id, customer_id: body.customer_id, status: body.status, version: body.version,
      pickup: body.pickup, dropoff: body.dropoff, eta_s: body.eta_s, updated_ts: ms(body.updated_at),
      courier: body.courier_id && at ? { id: body.courier_id, lat: at.lat, lng: at.lng } : null,
      timeline: (body.timeline || []).map((step) => ({ ...step, ts: step.ts ?? ms(step.at) })),
    };
  }

  /** GET /v1/orders/{id} (with its ETag once known): the first paint when the channel has no snapshot. */
  async function fetchOrder(tracker, token) {
    const headers = { Authorization: `Bearer ${token}` };
    if (page.etag) headers["If-None-Match"] = page.etag;
    let resp;
    try {
      resp = await fetch(`/v1/orders/${encodeURIComponent(tracker.orderId)}`, { headers, cache: "no-store" });
    } catch {
      return; // offline: the socket's reconnection brings the order
    }
    if (resp.status === 304) return;
    if (!resp.ok) {
      if (!tracker.view) notice.show(...refusal(resp.status, tracker.orderId));
      return;
    }
    page.etag = resp.headers.get("ETag");
    tracker.show(asView(await resp.json()), false);
  }

  function connect(token) {
    const socket = io("/live", { transports: ["websocket", "polling"], auth: { token } });
    socket.on("connect", () => connection("connecting"));
    socket.on("disconnect", () => connection("reconnecting"));
    socket.on("connect_error", (err) => {
      if (socket.active) {
        connection("reconnecting"); // a transport failure: socket.io-client retries
      } else {
        connection("offline"); // the gateway refused this token
        notice.show("This tracking link has expired or is not valid.",
          `Reason: ${err.message}. Open the latest link from your order confirmation.`);
      }
    });
    return new LiveClient(socket);
  }

  function start() {
    const orderId = orderIdFromPath();
    const token = accessToken();
    const map = makeMap({ preferCanvas: false, zoomControl: true });
    page.tracker = new Tracker(map, orderId);
    $("order-id").textContent = orderId ?? "";
    if (!orderId) return notice.show("This page needs an order in its address.", "Open the link from your order confirmation.");
    if (!token) return notice.show("This tracking link is incomplete.", "It has no access token: open the link from your order confirmation again.");
    const live = connect(token);
    const channel = `order:${orderId}`;
    live.subscribe(channel, {
      onUpdate: (msg) => page.tracker.show(msg.data),
      onSnapshot: (_, msg) => (msg ? page.tracker.show(msg.data) : fetchOrder(page.tracker, token)),
      onState: (state, detail) => {
        if (state === "live") {
          connection("live");
          notice.clear();
        } else if (state === "refused") {
          connection("offline");
          live.unsubscribe(channel);
          const [title, more] = /not allowed/.test(detail) ? refusal(403, orderId) : ["The order cannot be shown.", detail];
          notice.show(title, more);
        } else {
          connection("reconnecting");
        }
      },
    });
    setInterval(() => page.tracker.drawEta(Date.now()), ETA_REDRAW_MS);
    Object.assign(window.livetrack, { map, live, socket: live.socket });
  }

  const page = { tracker: null, etag: null };
  window.livetrack = { courier: () => page.tracker?.courierTarget() ?? null, view: () => page.tracker?.view ?? null };
  start();
})();
