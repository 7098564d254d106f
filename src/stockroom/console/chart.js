// A step chart of an item's quantity over time, drawn by uPlot from the ledger rows the
// table beside it lists (the table is the accessible view of the same data). uPlot is
// loaded the first time a chart is drawn, not with the console.

import { html, useEffect, useRef, useState } from "./vendor/preact-htm.js";

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

/** [[times, ascending, in seconds], [quantity after each]]. */
function series(rows = []) {
  const ordered = [...rows].reverse();
  return [ordered.map((row) => Date.parse(row.created_at) / 1000), ordered.map((row) => row.quantity_after)];
}

export function StockChart({ rows }) {
  const box = useRef(null);
  const plot = useRef(null);
  const [failed, setFailed] = useState(false);

  useEffect(() => {
    let cancelled = false;
    if (!rows?.length) {
      plot.current?.destroy();
      plot.current = null;
      return undefined;
    }
    loadPlot()
      .then((uPlot) => {
        if (cancelled) return;
        const width = Math.max(box.current.clientWidth, 240);
        const options = {
          width,
          height: 220,
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
        plot.current?.destroy();
        plot.current = new uPlot(options, series(rows), box.current);
      })
      .catch(() => !cancelled && setFailed(true));
    return () => {
      cancelled = true;
    };
  }, [rows]);

  useEffect(() => {
    const observer = new ResizeObserver(() => {
      if (plot.current && box.current) {
        plot.current.setSize({ width: Math.max(box.current.clientWidth, 240), height: 220 });
      }
    });
    observer.observe(box.current);
    return () => {
      observer.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
  }, []);

  return html`<figure class="chart">
    <div class="chart-box" ref=${box} aria-hidden="true"></div>
    <figcaption>
      ${failed ? "The chart could not be drawn; the table lists the same changes." : "Quantity over time (this page of the history)."}
    </figcaption>
  </figure>`;
}
