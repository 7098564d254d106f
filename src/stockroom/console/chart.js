// A step chart of an item's quantity over time, drawn by uPlot from the item's whole ledger
// (`quantity_after` of each change). The chart loads its own data, apart from the table beside
// it (the accessible view, one page at a time): the newest 500 changes first (the API's
// largest page), drawn as soon as they are in, then older pages by `next_cursor`, each one
// extending the chart (one `setData`), up to MAX_POINTS. A `stock.adjusted` event of the item
// adds its point live. Leaving the page aborts the loading. uPlot is loaded the first time a
// chart is drawn, not with the console; the chart's box has its size from the start.

import { html, useEffect, useRef, useState } from "./vendor/preact-htm.js";
import { api } from "./api.js";
import { formatInteger } from "./format.js";
import { onChange } from "./live.js";

const PAGE = 500; // the API's largest page
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

/** The points so far, ascending in time: seconds, quantity after, and the rows' ids. */
class History {
  constructor() {
    this.times = [];
    this.quantities = [];
    this.ids = new Set();
    this.capped = false;
  }

  get size() {
    return this.times.length;
  }

  /** Rows of an older page (newest first), before the points so far. */
  prepend(rows) {
    const times = [];
    const quantities = [];
    for (let i = rows.length - 1; i >= 0; i -= 1) {
      const row = rows[i];
      if (this.ids.has(row.id)) continue;
      this.ids.add(row.id);
      times.push(Date.parse(row.created_at) / 1000);
      quantities.push(row.quantity_after);
    }
    this.times = times.concat(this.times);
    this.quantities = quantities.concat(this.quantities);
    const over = this.times.length - MAX_POINTS;
    if (over > 0) {
      this.times = this.times.slice(over);
      this.quantities = this.quantities.slice(over);
      this.capped = true;
    }
  }

  /** A change that just happened, after the points so far. */
  append(row) {
    if (this.ids.has(row.id)) return false;
    this.ids.add(row.id);
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
  if (state === "loading") return `Quantity over time: the newest ${count} changes, loading older changes...`;
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
    let uPlot = null;
    let complete = false;
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
      const state = history.capped ? "capped" : complete ? "all" : "loading";
      setView({ state, size: history.size });
    };
    const page = (cursor) => api.listAdjustments(id, { limit: PAGE, cursor }, abort.signal);
    const run = async () => {
      // The library and the first page come in together: the first draw takes one request.
      const [library, first] = await Promise.all([loadPlot(), page(null)]);
      uPlot = library;
      let answer = first.data;
      for (;;) {
        if (abort.signal.aborted) return;
        history.prepend(answer.data);
        const more = Boolean(answer.next_cursor) && !history.capped;
        if (answer.next_cursor && history.size >= MAX_POINTS) history.capped = true;
        complete = !more && !history.capped;
        draw();
        show();
        if (!more || history.capped) return;
        answer = (await page(answer.next_cursor)).data;
      }
    };
    run().catch(() => {
      if (!abort.signal.aborted) setView({ state: "failed", size: 0 });
    });
    const stop = onChange(({ type, data }) => {
      if (type !== "stock.adjusted" || data.item_id !== id) return;
      if (history.append(data)) {
        draw();
        if (uPlot) show();
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
