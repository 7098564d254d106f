// The overview: the catalogue's counts (GET /items/summary), whether the service is ready,
// and the latest changes as they happen (the live stream), announced politely.

import { html, useEffect, useState } from "./vendor/preact-htm.js";
import { api } from "./api.js";
import { formatDelta, formatInteger, formatMoney, formatTime } from "./format.js";
import { onChange } from "./live.js";
import { Alert, hrefOf } from "./ui.js";

const LATEST = 10;

function describe({ type, data }) {
  switch (type) {
    case "item.created":
      return html`New item <a href=${hrefOf(`/items/${data.id}`)}>${data.name}</a>`;
    case "item.updated":
      return html`<a href=${hrefOf(`/items/${data.id}`)}>${data.name}</a> changed`;
    case "item.deleted":
      return html`Item <code>${data.sku}</code> deleted`;
    case "stock.adjusted":
      return html`<a href=${hrefOf(`/items/${data.item_id}`)}>Item ${data.item_id}</a>${`: stock ${formatDelta(data.delta)}${data.reason ? ` (${data.reason})` : ""}, now ${formatInteger(data.quantity_after)}`}`;
    case "stock.low":
      return html`<a href=${hrefOf(`/items/${data.id}`)}>${data.name}</a> is at or below its reorder point`;
    default:
      return type;
  }
}

export function OverviewPage() {
  const [summary, setSummary] = useState(null);
  const [error, setError] = useState(null);
  const [ready, setReady] = useState(null);
  const [changes, setChanges] = useState([]);

  useEffect(() => {
    let timer = null;
    const load = () =>
      api
        .summary()
        .then(({ data }) => (setSummary(data), setError(null)))
        .catch((failure) => setError(failure.detail));
    load();
    api
      .readiness()
      .then(() => setReady(true))
      .catch(() => setReady(false));
    const stop = onChange((event) => {
      if (event.type !== "resync") {
        setChanges((old) => [{ ...event, seen: Date.now() }, ...old].slice(0, LATEST));
      }
      clearTimeout(timer);
      timer = setTimeout(load, 300);
    });
    return () => {
      stop();
      clearTimeout(timer);
    };
  }, []);

  const count = (value) => (summary ? formatInteger(value) : "…");
  return html`<section>
    <h1 tabindex="-1">Overview</h1>
    <${Alert}>${error}<//>
    <dl class="tiles">
      <div><dt>Items</dt><dd>${count(summary?.items)}</dd></div>
      <div><dt>Units in stock</dt><dd>${count(summary?.units)}</dd></div>
      <div><dt>Stock value</dt><dd>${summary ? formatMoney(summary.value) : "…"}</dd></div>
      <div>
        <dt><a href=${hrefOf("/items", { in_stock: "false" })}>Out of stock</a></dt>
        <dd>${count(summary?.out_of_stock)}</dd>
      </div>
      <div>
        <dt><a href=${hrefOf("/items", { low_stock: "true" })}>At or below reorder point</a></dt>
        <dd>${count(summary?.low_stock)}</dd>
      </div>
    </dl>
    <p>
      Service: ${ready === null ? "checking…" : ready ? "ready" : "not ready (the database does not answer)"}
    </p>
    <h2>Latest changes</h2>
    ${changes.length
      ? html`<ol class="changes">
          ${changes.map(
            (change) => html`<li key=${change.id}>
              <time datetime=${change.created_at}>${formatTime(change.created_at)}</time>
              ${" "}${describe(change)}
            </li>`,
          )}
        </ol>`
      : html`<p class="muted">Changes made by anyone show here as they happen.</p>`}
  </section>`;
}
