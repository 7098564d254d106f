// One item: its fields, edit (If-Match), delete, its ledger (a table of one page at a time and
// a step chart of the whole history, which loads its own data: chart.js) and the stock
// adjustment form, kept up to date by the live stream.

import { html, useEffect, useRef, useState } from "./vendor/preact-htm.js";
import { api, fieldErrors } from "./api.js";
import { StockChart, dropPrefetched, prefetchChart } from "./chart.js";
import { formatDelta, formatInteger, formatMoney, formatTime } from "./format.js";
import { onChange } from "./live.js";
import { Alert, Dialog, Field, announce, navigate } from "./ui.js";
import { wholeNumber } from "./items.js";

const LEDGER_PAGE = 50;

/** The ETag of an item as the API makes it (docs/api.md: `"<id>-<version>"`). */
const etagOf = (item) => `"${item.id}-${item.version}"`;

export function ItemPage({ id, me }) {
  const [item, setItem] = useState(null);
  const [error, setError] = useState(null);
  const [gone, setGone] = useState(false);
  const [editing, setEditing] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const [ledgerVersion, setLedgerVersion] = useState(0);
  const [resyncs, setResyncs] = useState(0); // the stream had a gap: the chart reloads
  // The shell focused the loading page's heading; once the item shows, its own heading
  // takes the focus back (the loading one is gone), unless the user moved on meanwhile.
  const heading = useRef(null);
  const loaded = Boolean(item);
  useEffect(() => {
    if (loaded && (document.activeElement === document.body || !document.activeElement)) {
      heading.current?.focus();
    }
  }, [loaded]);

  const load = async () => {
    try {
      const { data } = await api.getItem(id);
      setItem(data);
      setError(null);
      return data;
    } catch (failure) {
      if (failure.status === 404) setGone(true);
      else setError(failure);
      return null;
    }
  };

  // The ledger's first page and the chart are asked for with the item, not after it (they
  // are drawn below the item's fields, so they mount only once it has come).
  const firstLedger = useRef(null);
  useEffect(() => {
    prefetchChart(id);
    const answer = api.listAdjustments(id, { limit: LEDGER_PAGE });
    answer.catch(() => {}); // a failure shows when the ledger takes it
    firstLedger.current = { id, answer };
    load();
    return dropPrefetched;
  }, [id]);

  // Live: another client's change shows here at once.
  useEffect(
    () =>
      onChange(({ type, data }) => {
        if (type === "item.updated" && data.id === id) {
          setItem(data);
          announce(`This item was changed: ${data.name}.`);
        } else if (type === "stock.adjusted" && data.item_id === id) {
          // The adjustment bumped the item's version: read it again for its new ETag.
          load();
          setLedgerVersion((n) => n + 1);
          announce(`Quantity now ${formatInteger(data.quantity_after)}.`);
        } else if (type === "item.deleted" && data.id === id) {
          setGone(true);
          announce("This item was deleted.");
        } else if (type === "resync") {
          // Changes may have been missed while the stream was away: read it all again.
          load();
          setLedgerVersion((n) => n + 1);
          setResyncs((n) => n + 1);
        }
      }),
    [id],
  );

  if (gone) {
    return html`<section>
      <h1 tabindex="-1">Item not found</h1>
      <p>This item does not exist (any more). <a href="#/items">Back to the items.</a></p>
    </section>`;
  }
  if (!item) {
    return html`<section>
      <h1 tabindex="-1">Item</h1>
      <${Alert}>${error?.detail}<//>
      ${error ? null : html`<p>Loading…</p>`}
    </section>`;
  }
  const canWrite = me.scopes.includes("write");
  return html`<section class="item">
    <p class="crumbs"><a href="#/items">Items</a></p>
    <div class="page-head">
      <h1 tabindex="-1" ref=${heading}>${item.name}</h1>
      ${canWrite
        ? html`<div class="actions">
            <button type="button" onClick=${() => setEditing(true)}>Edit item</button>
            <button type="button" class="danger" onClick=${() => setDeleting(true)}>Delete item</button>
          </div>`
        : null}
    </div>
    <div class="item-grid">
      <dl class="fields">
        <dt>SKU</dt><dd><code>${item.sku}</code></dd>
        <dt>Price</dt><dd>${formatMoney(item.price)}</dd>
        <dt>Quantity</dt><dd class="quantity">${formatInteger(item.quantity)}</dd>
        <dt>Reorder point</dt>
        <dd>
          ${item.reorder_point == null ? html`<span class="muted">None</span>` : formatInteger(item.reorder_point)}
          ${item.reorder_point != null && item.quantity <= item.reorder_point
            ? html` <strong class="low">Low stock</strong>`
            : null}
        </dd>
        <dt>Description</dt><dd>${item.description || html`<span class="muted">None</span>`}</dd>
        <dt>Version</dt><dd>${formatInteger(item.version)}</dd>
        <dt>Created</dt><dd><time datetime=${item.created_at}>${formatTime(item.created_at)}</time></dd>
        <dt>Changed</dt><dd><time datetime=${item.updated_at}>${formatTime(item.updated_at)}</time></dd>
      </dl>
      ${canWrite ? html`<${AdjustStock} item=${item} onAdjusted=${() => { load(); setLedgerVersion((n) => n + 1); }} />` : null}
    </div>
    <${Ledger} id=${id} version=${ledgerVersion} resyncs=${resyncs} first=${firstLedger} />
    ${canWrite
      ? html`<${EditItem} open=${editing} item=${item} onClose=${() => setEditing(false)} onSaved=${setItem} />
          <${DeleteItem} open=${deleting} item=${item} onClose=${() => setDeleting(false)} />`
      : null}
  </section>`;
}

function AdjustStock({ item, onAdjusted }) {
  const [delta, setDelta] = useState("");
  const [reason, setReason] = useState("");
  const [error, setError] = useState(null);
  const [done, setDone] = useState(null);
  const [busy, setBusy] = useState(false);
  // Set at once, before any re-render: a double click sends one request.
  const inFlight = useRef(false);
  const errors = fieldErrors(error);
  const submit = async (event) => {
    event.preventDefault();
    if (inFlight.current) return;
    inFlight.current = true;
    setBusy(true);
    setError(null);
    setDone(null);
    const number = Number(delta);
    const body = { delta: delta.trim() !== "" && Number.isInteger(number) ? number : delta };
    if (reason.trim()) body.reason = reason.trim();
    try {
      // Each attempt carries its own Idempotency-Key (api.js): a retry of a request whose
      // answer was lost would never apply twice.
      const { data } = await api.adjust(item.id, body);
      setDone(`Done: ${formatDelta(data.delta)}, quantity now ${formatInteger(data.quantity_after)}.`);
      setDelta("");
      setReason("");
      onAdjusted();
    } catch (failure) {
      setError(failure);
    } finally {
      inFlight.current = false;
      setBusy(false);
    }
  };
  const unplaced = error && !Object.keys(errors).length ? error.detail : null;
  return html`<form class="adjust" novalidate onSubmit=${submit} aria-labelledby="adjust-title">
    <h2 id="adjust-title">Adjust stock</h2>
    <${Field} id="adjust-delta" label="Change in quantity" inputmode="numeric" value=${delta}
      onInput=${(e) => setDelta(e.currentTarget.value)} error=${errors.delta}
      hint="A positive number adds stock; a negative one (e.g. -3) removes it." autocomplete="off" />
    <${Field} id="adjust-reason" label="Reason" value=${reason}
      onInput=${(e) => setReason(e.currentTarget.value)} error=${errors.reason}
      hint="Optional, e.g. delivery, sale, count." />
    <${Alert}>${unplaced}<//>
    <p class="done" role="status">${done}</p>
    <button type="submit" disabled=${busy}>Adjust stock</button>
  </form>`;
}

function Ledger({ id, version, resyncs, first }) {
  const [cursors, setCursors] = useState([""]); // the cursor of each page shown so far
  const [page, setPage] = useState(null);
  const [error, setError] = useState(null);
  const cursor = cursors[cursors.length - 1];
  useEffect(() => {
    let current = true;
    // The page's own early request, if nothing has changed since it was sent.
    const early = first.current;
    first.current = null;
    const fresh = early && early.id === id && !cursor && version === 0;
    (fresh ? early.answer : api.listAdjustments(id, { limit: LEDGER_PAGE, cursor }))
      .then(({ data }) => current && (setPage(data), setError(null)))
      .catch((failure) => current && setError(failure));
    return () => {
      current = false;
    };
  }, [id, cursor, version]);
  const rows = page?.data || [];
  return html`<section class="ledger" aria-labelledby="ledger-title">
    <h2 id="ledger-title">Stock history</h2>
    <${Alert}>${error?.detail}<//>
    <div class="ledger-grid">
      <${StockChart} id=${id} key=${resyncs} />
      <div class="table-wrap">
        <table>
          <caption class="visually-hidden">Stock changes, newest first</caption>
          <thead>
            <tr>
              <th scope="col">When</th>
              <th scope="col" class="number">Change</th>
              <th scope="col">Reason</th>
              <th scope="col" class="number">Quantity after</th>
            </tr>
          </thead>
          <tbody>
            ${rows.map(
              (row) => html`<tr key=${row.id}>
                <td><time datetime=${row.created_at}>${formatTime(row.created_at)}</time></td>
                <td class="number">${formatDelta(row.delta)}</td>
                <td>${row.reason || ""}</td>
                <td class="number">${formatInteger(row.quantity_after)}</td>
              </tr>`,
            )}
            ${page && !rows.length ? html`<tr><td colspan="4">No stock change yet.</td></tr>` : null}
          </tbody>
        </table>
      </div>
    </div>
    <nav class="pager" aria-label="Stock history pages">
      <button type="button" disabled=${cursors.length < 2}
        onClick=${() => setCursors(cursors.slice(0, -1))}>Newer changes</button>
      <button type="button" disabled=${!page?.next_cursor}
        onClick=${() => setCursors([...cursors, page.next_cursor])}>Older changes</button>
    </nav>
  </section>`;
}

function EditItem({ open, item, onClose, onSaved }) {
  const [values, setValues] = useState(null);
  const [base, setBase] = useState(null); // the version being edited: its ETag goes in If-Match
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const start = (from) => {
    setBase(etagOf(from));
    setValues({
      sku: from.sku,
      name: from.name,
      price: from.price,
      description: from.description || "",
      reorder_point: from.reorder_point == null ? "" : String(from.reorder_point),
    });
    setError(null);
  };
  useEffect(() => {
    if (open) start(item);
    else setValues(null);
  }, [open]);
  const loadNewVersion = async () => {
    const { data } = await api.getItem(item.id);
    onSaved(data);
    start(data);
  };
  const submit = async (event) => {
    event.preventDefault();
    if (busy) return;
    setBusy(true);
    try {
      const body = {
        ...values,
        description: values.description || null,
        reorder_point: values.reorder_point.trim() === "" ? null : wholeNumber(values.reorder_point),
      };
      const { data } = await api.updateItem(item.id, body, base);
      onSaved(data);
      announce(`Saved ${data.name}.`);
      onClose();
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  };
  const errors = fieldErrors(error);
  const stale = error?.status === 412;
  const set = (name) => (event) => setValues({ ...values, [name]: event.currentTarget.value });
  // Shown once its form is filled in, so that the dialog opens with the focus in the form.
  return html`<${Dialog} id="edit-item" title="Edit item" open=${open && values !== null} onClose=${onClose}>
    ${values
      ? html`<form method="dialog" novalidate onSubmit=${submit}>
          ${stale
            ? html`<div class="alert" role="alert">
                <p>Someone else changed this item while you were editing it. Your changes were not saved.</p>
                <button type="button" onClick=${loadNewVersion}>Load the new version</button>
              </div>`
            : html`<${Alert}>${error && !Object.keys(errors).length ? error.detail : null}<//>`}
          <${Field} id="edit-sku" label="SKU" value=${values.sku} onInput=${set("sku")} error=${errors.sku} />
          <${Field} id="edit-name" label="Name" value=${values.name} onInput=${set("name")} error=${errors.name} />
          <${Field} id="edit-price" label="Price" inputmode="decimal" value=${values.price}
            onInput=${set("price")} error=${errors.price} />
          <${Field} id="edit-reorder-point" label="Reorder point" inputmode="numeric"
            value=${values.reorder_point} onInput=${set("reorder_point")} error=${errors.reorder_point}
            hint="Empty: none." />
          <${Field} id="edit-description" label="Description" multiline value=${values.description}
            onInput=${set("description")} error=${errors.description} />
          <div class="actions">
            <button type="submit" disabled=${busy}>Save changes</button>
            <button type="button" class="quiet" onClick=${onClose}>Cancel</button>
          </div>
        </form>`
      : null}
  <//>`;
}

function DeleteItem({ open, item, onClose }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    if (open) setError(null);
  }, [open]);
  const confirm = async () => {
    setBusy(true);
    try {
      await api.deleteItem(item.id, etagOf(item));
      announce(`Deleted ${item.name}.`);
      onClose();
      navigate("/items");
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  };
  return html`<${Dialog} id="delete-item" title="Delete this item?" open=${open} onClose=${onClose}>
    <p>${item.name} (<code>${item.sku}</code>) will be deleted with its stock history. This cannot be undone.</p>
    <${Alert}>${error?.detail}<//>
    <div class="actions">
      <button type="button" class="danger" disabled=${busy} onClick=${confirm}>Delete</button>
      <button type="button" class="quiet" onClick=${onClose}>Keep it</button>
    </div>
  <//>`;
}
