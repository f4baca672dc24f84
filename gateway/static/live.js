// What the livetrack pages share: the access token, the map, and LiveClient, the /live client that
// resumes, dedupes by seq and repairs gaps. Loaded before the page's own script (app.js, track.js),
// it defines window.livetrackLib.
/* global L */
(() => {
  "use strict";

  const GRID_STEPS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10]; // graticule spacing, degrees
  const GRID_MAX_LINES = 40;
  const FALLBACK_CITY = [37.7749, -122.4194];

  /** Content of <meta name=...>, or "". */
  function meta(name) {
    return document.querySelector(`meta[name="${name}"]`)?.content.trim() ?? "";
  }

  /** Map centre from <meta name="livetrack-city" content="lat,lng">. */
  function cityCentre() {
    const [lat, lng] = meta("livetrack-city").split(",").map(Number);
    return Number.isFinite(lat) && Number.isFinite(lng) ? [lat, lng] : FALLBACK_CITY;
  }

  /** The access token: #token=... (never sent to the server) first, then localStorage "livetrack.token". */
  function accessToken() {
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
    if (fromHash) return fromHash;
    try {
      return localStorage.getItem("livetrack.token");
    } catch {
      return null; // storage disabled
    }
  }

  /** Lat/lng lines over the visible area, in their own pane under the drivers. */
  function addGraticule(map) {
    map.createPane("grid").style.zIndex = 250;
    const style = { renderer: L.svg({ pane: "grid" }), color: "#c4c9cf", weight: 1, interactive: false };
    const layer = L.layerGroup().addTo(map);
    const draw = () => {
      const b = map.getBounds();
      const span = Math.max(b.getNorth() - b.getSouth(), b.getEast() - b.getWest());
      const step = GRID_STEPS.find((s) => span / s <= GRID_MAX_LINES) ?? 10;
      layer.clearLayers();
      for (let k = Math.ceil(b.getSouth() / step); k * step <= b.getNorth(); k++) {
        layer.addLayer(L.polyline([[k * step, b.getWest()], [k * step, b.getEast()]], style));
      }
      for (let k = Math.ceil(b.getWest() / step); k * step <= b.getEast(); k++) {
        layer.addLayer(L.polyline([[b.getSouth(), k * step], [b.getNorth(), k * step]], style));
      }
    };
    map.on("moveend", draw);
    draw();
  }

  /** The map in #map on the city: tiles when a template is configured, else paper and graticule. */
  function makeMap(options = {}) {
    const map = L.map("map", { preferCanvas: true, ...options }).setView(cityCentre(), 13);
    const tiles = window.LIVETRACK_TILES || meta("livetrack-tiles");
    if (tiles) {
      L.tileLayer(tiles, { maxZoom: 19, attribution: window.LIVETRACK_TILES_ATTRIBUTION || "" }).addTo(map);
    } else {
      addGraticule(map);
    }
    return map;
  }

  /**
   * /live over the official socket.io-client, unmodified: per channel, seqs reach the handlers in order
   * and once. On every (re)connection each channel is subscribed again with `since` (its last seq), and
   * the gateway sends what was missed in the ack, or the snapshot with `recovered: false` when its
   * history cannot cover the gap. A seq jump the gateway did not declare (`skipped`) is a gap: the
   * channel resubscribes from its last seq. Events (`ack: true`) are acked.
   */
  class LiveClient {
    constructor(socket) {
      this.socket = socket;
      this.channels = new Map(); // channel -> {onUpdate, onSnapshot, onState}
      this.last = new Map(); // channel -> last seq handed to its handler
      this.resyncing = new Set();
      this.stats = { delivered: 0, duplicates: 0, skipped: 0, gaps: 0, resets: 0, resumes: 0 };
      socket.on("connect", () => this.channels.forEach((_, channel) => this.send(channel)));
      socket.on("update", (msg) => this.receive(msg));
    }

    /** Watch `channel`: handlers {onUpdate(msg), onSnapshot(channel, msg|null), onState(state, detail)}. */
    subscribe(channel, handlers) {
      this.channels.set(channel, handlers);
      if (this.socket.connected) this.send(channel);
    }

    send(channel) {
      const since = this.last.get(channel);
      const request = since === undefined ? { channel } : { channel, since };
      if (since !== undefined) this.stats.resumes++;
      this.socket.timeout(5000).emit("subscribe", request, (err, ack) => {
        this.resyncing.delete(channel);
        const handlers = this.channels.get(channel);
        if (!handlers) return;
        if (err) {
          handlers.onState?.("error", "subscribe: no answer, retrying");
          if (this.socket.connected) setTimeout(() => this.send(channel), 2000);
          return;
        }
        if (!ack || !ack.ok) {
          handlers.onState?.("refused", ack?.error ?? "no reason given");
          return;
        }
        this.applyAck(channel, since, ack, handlers);
        handlers.onState?.("live", channel);
      });
    }

    applyAck(channel, since, ack, handlers) {
      // `fleet`: every driver's latest, but for channels subscribed alone (they resume on their own)
      (ack.drivers || []).filter((msg) => !this.channels.has(msg.channel)).forEach((msg) => this.receive(msg));
      if (since !== undefined && ack.recovered) {
        (ack.updates || []).forEach((msg) => this.receive(msg));
      } else if ("snapshot" in ack) {
        if (since !== undefined) this.stats.resets++;
        const snap = ack.snapshot;
        if (!snap || snap.seq > (this.last.get(channel) ?? 0)) handlers.onSnapshot?.(channel, snap);
      }
      if (channel !== "fleet" && ack.seq > (this.last.get(channel) ?? 0)) this.last.set(channel, ack.seq);
    }

    /** Route an update to its channel's handler, or to `fleet`'s for driver and ride channels not watched alone. */
    handlersOf(channel) {
      const viaFleet = channel.startsWith("driver:") || channel.startsWith("ride:");
      return this.channels.get(channel) ?? (viaFleet ? this.channels.get("fleet") : undefined);
    }

    receive(msg) {
      if (!msg || typeof msg.channel !== "string" || !Number.isFinite(msg.seq)) return;
      const { channel, seq } = msg;
      const last = this.last.get(channel);
      if (last !== undefined && seq <= last) {
        this.stats.duplicates++;
        if (msg.ack) this.ack(channel, last); // a retry: our ack was lost or late
        return;
      }
      const skipped = msg.skipped || 0;
      if (last !== undefined && seq - skipped > last + 1 && this.channels.has(channel)) {
        if (!this.resyncing.has(channel)) { // the resubscribe's ack brings this one and those before it
          this.stats.gaps++;
          this.resyncing.add(channel);
          this.send(channel);
        }
        return;
      }
      this.last.set(channel, seq);
      this.stats.skipped += skipped;
      this.stats.delivered++;
      this.handlersOf(channel)?.onUpdate?.(msg);
      if (msg.ack) this.ack(channel, seq);
    }

    ack(channel, seq) {
      this.socket.emit("ack", { channel, seq });
    }

    /** Stop watching `channel` (forgets its seq: a later subscribe starts from the snapshot). */
    unsubscribe(channel) {
      this.channels.delete(channel);
      this.last.delete(channel);
      this.resyncing.delete(channel);
      if (this.socket.connected) this.socket.emit("unsubscribe", { channel });
    }
  }

  window.livetrackLib = { meta, cityCentre, accessToken, makeMap, LiveClient };
})();
