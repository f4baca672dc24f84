// livetrack ops layer: supply, demand and surge per H3 cell, from the `cell:{h3}` channels on /live.
// Needs the page's map, LiveClient and socket: app.js announces them with a "livetrack:ready" event (or window.livetrack).
// The layer is off until switched on in the map's layer control; then it subscribes to the cells where
// drivers are seen (their `fleet` updates carry the cell) and draws each cell's latest features.
/* global L */
(() => {
  "use strict";

  const MAX_CELLS = 400; // channels one page subscribes to at most
  const SURGE_COLOURS = [[1.0, "#2f9e44"], [1.25, "#94d82d"], [1.5, "#fab005"], [2.0, "#f76707"], [Infinity, "#e03131"]];

  function colour(surge) {
    return SURGE_COLOURS.find(([upTo]) => surge <= upTo)[1];
  }

  /** Tooltip text of a cell's features (text only: nothing here is markup). */
  function describe(f) {
    const el = document.createElement("div");
    const end = new Date(f.end_ts).toLocaleTimeString();
    el.textContent = `${f.cell} · supply ${f.supply} (${f.smoothed_supply.toFixed(2)}) · demand ${f.demand} `
      + `(${f.smoothed_demand.toFixed(2)}) · surge ×${f.surge.toFixed(2)} · ${(f.speed_mps * 3.6).toFixed(0)} km/h `
      + `${f.speed_source === "CELL" ? "" : "(default) "}· ${f.window} to ${end}${f.final ? "" : " (running)"}`;
    return el;
  }

  class SupplyLayer {
    /** `live` is the page's LiveClient (resume, dedupe, resubscribe on reconnect); `socket` its connection. */
    constructor(map, live, socket) {
      this.live = live;
      this.group = L.layerGroup();
      this.cells = new Map(); // cell -> {polygon, seq}
      this.on = false;
      map.on("overlayadd", (e) => e.layer === this.group && this.start());
      map.on("overlayremove", (e) => e.layer === this.group && this.stop());
      L.control.layers(null, { "supply / demand": this.group }, { collapsed: false, position: "bottomleft" })
        .addTo(map);
      socket.on("update", (msg) => this.discover(msg)); // every update: the cells drivers are seen in
    }

    start() {
      this.on = true;
    }

    stop() {
      this.on = false;
      for (const cell of this.cells.keys()) this.live.unsubscribe(`cell:${cell}`);
      this.cells.clear();
      this.group.clearLayers();
    }

    /** A driver seen in a cell the layer does not show yet: watch that cell's features. */
    discover(msg) {
      if (!this.on || typeof msg?.channel !== "string" || !msg.channel.startsWith("driver:")) return;
      const cell = msg.data?.cell;
      if (typeof cell === "string" && !this.cells.has(cell) && this.cells.size < MAX_CELLS) {
        this.cells.set(cell, { polygon: null, seq: 0 });
        this.live.subscribe(`cell:${cell}`, {
          onUpdate: (update) => this.draw(update),
          onSnapshot: (_, snapshot) => snapshot && this.draw(snapshot),
        });
      }
    }

    /** Draw (or recolour) a cell from a `cell.features` update; older seqs are ignored. */
    draw(msg) {
      const f = msg.data;
      const held = this.cells.get(f?.cell);
      if (!held || msg.seq <= held.seq || !Array.isArray(f.boundary)) return;
      held.seq = msg.seq;
      const style = { color: colour(f.surge), weight: 1, fillOpacity: Math.min(0.6, 0.12 + 0.08 * f.smoothed_demand) };
      if (!held.polygon) {
        held.polygon = L.polygon(f.boundary, style).addTo(this.group);
      } else {
        held.polygon.setStyle(style);
      }
      held.polygon.bindTooltip(describe(f));
    }
  }

  function attach({ map, live, socket }) {
    window.livetrackSupply = new SupplyLayer(map, live, socket);
  }

  if (window.livetrack) attach(window.livetrack);
  else document.addEventListener("livetrack:ready", (e) => attach(e.detail), { once: true });
})();
