// A step chart of an item's quantity over time, drawn by uPlot from the item's ledger
// (`quantity_after` of each change). The chart loads its own data, apart from the table beside
// it (the accessible view, one page at a time): `GET /items/{id}/history`, the newest
// MAX_POINTS changes as two columns in one answer, drawn as soon as it is in. A
// `stock.adjusted` event of the item newer than the answer's `last_id` adds its point live
// (one that arrives while the answer is on its way waits for it). Leaving the page aborts the
// loading. uPlot is loaded the first time a chart is drawn, not with the console; the chart's
// box has its size from the start.

import { html, useEffect, useRef, useState } from "./vendor/preact-htm.js";
import { api } from "./api.js";
import { formatInteger } from "./format.js";
import { onChange } from "./live.js";

const MAX_POINTS = 20_000;
const HEIGHT = 220;

let loading = null;

function loadPlot() {
  if (!loading) {
    const sheet = document.createElement("link");
    sheet.rel = "stylesheet";
    sheet.href = new URL("./vendor/uPlot.min.css", import.meta.url).href;
    document.head.append(sheet);
    loading = import("./vendor/uPlot.esm.js").then((module) => module.default);
  }
  return loading;
}

// The item's page starts the chart's request and library as it opens, before its item has
// come (the chart is drawn below the item's fields, so it mounts only then): one round
// trip earlier. Live changes of the item are kept from that moment for the chart.
let early = null;

/** Start loading the chart of item `id` (its page calls this as it opens). */
export function prefetchChart(id) {
  dropPrefetched();
  loadPlot();
  const seen = [];
  const stop = onChange(({ type, data }) => {
    if (type === "stock.adjusted" && data.item_id === id) seen.push(data);
  });
  early = { id, answer: api.history(id, { limit: MAX_POINTS }), seen, stop };
  early.answer.catch(() => {}); // a failure shows when the chart takes it
}

/** Forget a chart loaded early that was never shown (its page closed first). */
export function dropPrefetched() {
  early?.stop();
  early = null;
}

function takePrefetched(id) {
  const taken = early && early.id === id ? early : null;
  dropPrefetched();
  return taken;
}

function colour(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function options(uPlot, width) {
  return {
    width,
    height: HEIGHT,
    legend: { show: false },
    cursor: { show: true, drag: { x: false, y: false } },
    scales: { x: { time: true } },
    axes: [
      { stroke: colour("--text"), grid: { stroke: colour("--grid") } },
      { stroke: colour("--text"), grid: { stroke: colour("--grid") } },
    ],
    series: [
      {},
      {
        label: "Quantity",
        stroke: colour("--accent"),
        width: 2,
        paths: uPlot.paths.stepped({ align: 1 }),
        points: { show: false },
      },
    ],
  };
}

/** The points so far, ascending in time: seconds and quantity after. */
class History {
  constructor() {
    this.times = [];
    this.quantities = [];
    this.lastId = null; // the newest ledger row drawn; null before the answer
    this.waiting = []; // live changes that came before the answer
    this.capped = false;
  }

  get size() {
    return this.times.length;
  }

  get loaded() {
    return this.lastId !== null;
  }

  /** The answer of `GET /items/{id}/history`, then the changes that came while it loaded. */
  load(answer) {
    this.times = answer.times;
    this.quantities = answer.quantities;
    this.capped = answer.next_cursor !== null;
    this.lastId = answer.last_id ?? 0;
    const waiting = this.waiting;
    this.waiting = [];
    for (const row of waiting) this.append(row);
  }

  /** A change that just happened, after the points so far; false if already drawn. */
  append(row) {
    if (!this.loaded) {
      this.waiting.push(row);
      return false;
    }
    if (row.id <= this.lastId) return false;
    this.lastId = row.id;
    this.times.push(Date.parse(row.created_at) / 1000);
    this.quantities.push(row.quantity_after);
    if (this.times.length > MAX_POINTS) {
      this.times.shift();
      this.quantities.shift();
      this.capped = true;
    }
    return true;
  }

  data() {
    return [this.times, this.quantities];
  }
}

function caption(state, size) {
  if (state === "failed") return "The chart could not be drawn; the table lists the same changes.";
  if (state === "start") return "Quantity over time: loading…";
  if (size === 0) return "Quantity over time: no change yet.";
  const count = formatInteger(size);
  if (state === "capped") return `Quantity over time: the newest ${count} changes.`;
  return `Quantity over time: all ${count} ${size === 1 ? "change" : "changes"}.`;
}

export function StockChart({ id }) {
  const box = useRef(null);
  const plot = useRef(null);
  const [view, setView] = useState({ state: "start", size: 0 });

  useEffect(() => {
    const abort = new AbortController();
    const history = new History();
    const early = takePrefetched(id);
    if (early) history.waiting.push(...early.seen);
    let uPlot = null;
    const draw = () => {
      if (abort.signal.aborted || !uPlot || !box.current) return;
      if (!history.size) {
        plot.current?.destroy();
        plot.current = null;
      } else if (plot.current) {
        plot.current.setData(history.data());
      } else {
        const width = Math.max(box.current.clientWidth, 240);
        plot.current = new uPlot(options(uPlot, width), history.data(), box.current);
      }
    };
    const show = () => {
      setView({ state: history.capped ? "capped" : "all", size: history.size });
    };
    const run = async () => {
      // The library and the data come in together: the chart takes one request.
      const [library, answer] = await Promise.all([
        loadPlot(),
        early ? early.answer : api.history(id, { limit: MAX_POINTS }, abort.signal),
      ]);
      if (abort.signal.aborted) return;
      uPlot = library;
      history.load(answer.data);
      draw();
      show();
    };
    run().catch(() => {
      if (!abort.signal.aborted) setView({ state: "failed", size: 0 });
    });
    const stop = onChange(({ type, data }) => {
      if (type !== "stock.adjusted" || data.item_id !== id) return;
      if (history.append(data)) {
        draw();
        show();
      }
    });
    return () => {
      abort.abort();
      stop();
      plot.current?.destroy();
      plot.current = null;
    };
  }, [id]);

  useEffect(() => {
    const observer = new ResizeObserver(() => {
      if (plot.current && box.current) {
        plot.current.setSize({ width: Math.max(box.current.clientWidth, 240), height: HEIGHT });
      }
    });
    observer.observe(box.current);
    return () => observer.disconnect();
  }, []);

  return html`<figure class="chart">
    <div class="chart-box" ref=${box} aria-hidden="true"></div>
    <figcaption data-state=${view.state}>${caption(view.state, view.size)}</figcaption>
  </figure>`;
}
