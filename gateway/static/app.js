// livetrack live map: one circle per driver, moved by `update` events of channel `fleet` on /live,
// through a client that resumes, dedupes by seq and repairs gaps (LiveClient, in live.js).
/* global L, io */
(() => {
  "use strict";

  const WINDOW_MS = 5000; // updates/s and the p50 age are measured over this window
  const STALE_MS = 30000; // a driver silent this long is drawn faded
  const $ = (id) => document.getElementById(id);
  const { accessToken, makeMap, LiveClient } = window.livetrackLib;

  /** Fill colour per driver status, read from the CSS variables the legend uses. */
  function statusColours() {
    const css = getComputedStyle(document.documentElement);
    const v = (name) => css.getPropertyValue(name).trim();
    return { AVAILABLE: v("--available"), EN_ROUTE: v("--en-route"), ON_TRIP: v("--on-trip"), OFFLINE: v("--offline"),
             ON_BREAK: v("--on-break") };
  }

  /** The drivers on the map: newest update per channel wins, older or repeated seqs are ignored. */
  class Fleet {
    constructor(map) {
      this.map = map;
      this.colours = statusColours();
      this.drivers = new Map(); // driver_id -> {marker, data, seenAt, stale}
      this.recent = []; // [receivedAt, ageMs] of applied updates
    }

    /** Apply one driver update (deduped and ordered by the live client); false when it has no position. */
    apply(msg) {
      if (!msg || typeof msg.channel !== "string") return false;
      const now = Date.now();
      if (Number.isFinite(msg.ts)) this.recent.push([now, now - msg.ts]);
      const data = msg.data || {};
      const id = data.driver_id ?? msg.channel;
      const entry = this.drivers.get(id) ?? this.add(id, data);
      if (!entry) return false;
      this.move(entry, data, now);
      return true;
    }

    add(id, data) {
      if (!Number.isFinite(data.lat) || !Number.isFinite(data.lng)) return null;
      const entry = { data: {}, seenAt: 0, stale: false };
      entry.marker = L.circleMarker([data.lat, data.lng], {
        radius: 6, weight: 1.5, color: "#fff", fillOpacity: 0.9, fillColor: this.colour(data.status),
      }).bindTooltip(() => describe(entry.data)).addTo(this.map);
      this.drivers.set(id, entry);
      return entry;
    }

    move(entry, data, now) {
      if (Number.isFinite(data.lat) && Number.isFinite(data.lng)) entry.marker.setLatLng([data.lat, data.lng]);
      if (data.status && data.status !== entry.data.status) {
        entry.marker.setStyle({ fillColor: this.colour(data.status) });
      }
      if (entry.stale) entry.marker.setStyle({ fillOpacity: 0.9, opacity: 1 });
      Object.assign(entry, { data: { ...entry.data, ...data }, seenAt: now, stale: false });
    }

    colour(status) {
      return this.colours[status] || "#495057";
    }

    /** Fade drivers not heard of for STALE_MS. */
    fadeStale(now) {
      for (const entry of this.drivers.values()) {
        if (!entry.stale && now - entry.seenAt > STALE_MS) {
          entry.stale = true;
          entry.marker.setStyle({ fillOpacity: 0.3, opacity: 0.3 });
        }
      }
    }

    /** Updates/s and the p50 age (ms, or null) over the last WINDOW_MS. */
    rates(now) {
      const first = this.recent.findIndex(([at]) => at >= now - WINDOW_MS);
      this.recent.splice(0, first < 0 ? this.recent.length : first);
      const ages = this.recent.map(([, age]) => age).sort((a, b) => a - b);
      return { perSecond: this.recent.length / (WINDOW_MS / 1000), p50: ages.length ? ages[ages.length >> 1] : null };
    }
  }

  const RIDE_COLOURS = { REQUESTED: "#9c36b5", OFFERED: "#9c36b5", ACCEPTED: "#f08c00", ONGOING: "#1c7ed6" };
  const FINAL_RIDE = new Set(["COMPLETED", "CANCELLED", "NO_DRIVERS"]);
  const RIDE_LINGER_MS = 4000; // a finished ride stays on the map this long

  /** Rides on the map (channel `ride:{id}` via `fleet`): pickup dot and a dashed line to the destination. */
  class Trips {
    constructor(map) {
      this.map = map;
      this.rides = new Map(); // ride_id -> {line, pickup, state}
    }

    /** Apply one `ride.state` update; other ride messages (driver moves) are drawn by the drivers. */
    apply(msg) {
      const d = msg.data || {};
      if (msg.type !== "ride.state" || !d.ride_id || !d.pickup || !d.destination) return false;
      let ride = this.rides.get(d.ride_id);
      if (!ride) {
        const ends = [[d.pickup.lat, d.pickup.lng], [d.destination.lat, d.destination.lng]];
        ride = {
          line: L.polyline(ends, { weight: 2, dashArray: "4 4", interactive: false }).addTo(this.map),
          pickup: L.circleMarker(ends[0], { radius: 4, weight: 1, fillOpacity: 1 }).addTo(this.map),
        };
        this.rides.set(d.ride_id, ride);
      }
      ride.state = d.state;
      const colour = RIDE_COLOURS[d.state] || "#868e96";
      ride.line.setStyle({ color: colour });
      ride.pickup.setStyle({ color: colour, fillColor: colour });
      ride.pickup.bindTooltip(`${d.ride_id} · ${d.state}${d.driver_id ? ` · ${d.driver_id}` : ""}`);
      if (FINAL_RIDE.has(d.state)) {
        setTimeout(() => this.remove(d.ride_id, ride), RIDE_LINGER_MS);
      }
      return true;
    }

    remove(id, ride) {
      if (this.rides.get(id) !== ride) return;
      ride.line.remove();
      ride.pickup.remove();
      this.rides.delete(id);
    }

    active() {
      let n = 0;
      for (const r of this.rides.values()) if (!FINAL_RIDE.has(r.state)) n++;
      return n;
    }
  }

  /** Tooltip of a driver, built as text nodes (ids come from devices). */
  function describe(d) {
    const el = document.createElement("div");
    const speed = Number.isFinite(d.speed) ? ` · ${(d.speed * 3.6).toFixed(0)} km/h` : "";
    el.textContent = `${d.driver_id ?? "?"} · ${d.status ?? "?"}${speed} · seq ${d.seq ?? "?"}`;
    return el;
  }

  function formatAge(ms) {
    if (ms === null) return "–";
    return Math.abs(ms) < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
  }

  /** The status panel. */
  const panel = {
    connection(state, detail = "") {
      $("conn").dataset.state = state;
      $("conn").textContent = detail ? `${state} (${detail})` : state;
    },
    error(text) {
      $("error").hidden = !text;
      $("error").textContent = text || "";
    },
    refresh(fleet) {
      const now = Date.now();
      const { perSecond, p50 } = fleet.rates(now);
      fleet.fadeStale(now);
      $("drivers").textContent = fleet.drivers.size;
      $("rides").textContent = trips.active();
      $("rate").textContent = perSecond.toFixed(1);
      $("age").textContent = formatAge(p50);
    },
  };

  function connect() {
    const token = accessToken();
    const socket = io("/live", { transports: ["websocket", "polling"], auth: token ? { token } : {} });
    socket.on("connect", () => panel.connection("connected"));
    socket.on("disconnect", (reason) => panel.connection("disconnected", reason));
    socket.on("connect_error", (err) => {
      // active: a transport failure the client retries; inactive: the server refused the connection
      panel.connection(socket.active ? "reconnecting" : "error", socket.active ? "" : "refused");
      panel.error(err.message);
    });
    socket.io.on("reconnect_attempt", (n) => panel.connection("reconnecting", `#${n}`));
    return new LiveClient(socket);
  }

  const map = makeMap();
  const fleet = new Fleet(map);
  const trips = new Trips(map);
  const live = connect();
  live.subscribe("fleet", {
    onUpdate: (msg) => (msg.channel.startsWith("ride:") ? trips.apply(msg) : fleet.apply(msg)),
    onSnapshot: (_, msg) => msg && fleet.apply(msg),
    onState: (state, detail) => {
      if (state === "live") {
        panel.connection("live", detail);
        panel.error("");
      } else {
        panel.connection("error", state === "refused" ? "subscribe refused" : detail);
        panel.error(state === "refused" ? `subscribe refused: ${detail}` : detail);
      }
    },
  });
  setInterval(() => panel.refresh(fleet), 500);
  // Extensions (static/supply.js, the ops supply/demand layer) get the map, the /live client and its socket.
  window.livetrack = { map, live, socket: live.socket };
  document.dispatchEvent(new CustomEvent("livetrack:ready", { detail: window.livetrack }));
})();
