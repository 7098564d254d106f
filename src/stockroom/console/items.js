// The items: one keyset page of the list at a time (never more), its filters in the hash,
// kept up to date by the live stream; and the dialog that creates an item.

import { html, useEffect, useRef, useState } from "./vendor/preact-htm.js";
import { api, downloadExport, fieldErrors } from "./api.js";
import { formatInteger, formatMoney, formatTime } from "./format.js";
import { onChange } from "./live.js";
import { Alert, Dialog, Field, announce, hrefOf, navigate } from "./ui.js";

const PAGE_SIZE = 50;
const FILTERS = ["q", "in_stock", "low_stock", "min_price", "max_price", "sort"];
const SORTS = [
  ["id", "Oldest first"],
  ["-id", "Newest first"],
  ["name", "Name, A to Z"],
  ["-name", "Name, Z to A"],
  ["price", "Price, lowest first"],
  ["-price", "Price, highest first"],
  ["-updated_at", "Recently changed first"],
];
// The cursor each page was reached from, so that "Previous page" can go back to it.
const previousCursor = new Map();

function filtersOf(params) {
  const filters = {};
  for (const name of FILTERS) {
    const value = params.get(name);
    if (value) filters[name] = value;
  }
  return filters;
}

function Filters({ filters, errors }) {
  const [draft, setDraft] = useState(filters);
  const search = useRef(null);
  useEffect(() => setDraft(filters), [JSON.stringify(filters)]);
  // "/" anywhere but in a text field focuses the search.
  useEffect(() => {
    const onKey = (event) => {
      const typing = event.target.closest?.("input, textarea, select, [contenteditable]");
      if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
        event.preventDefault();
        search.current?.focus();
      }
    };
    document.addEventListener("keydown", onKey);
    return () => document.removeEventListener("keydown", onKey);
  }, []);
  const apply = (next) => {
    const clean = Object.fromEntries(Object.entries(next).filter(([, v]) => v !== "" && v != null));
    navigate("/items", clean);
  };
  const set = (name) => (event) => setDraft({ ...draft, [name]: event.currentTarget.value });
  const setAndApply = (name) => (event) => apply({ ...draft, [name]: event.currentTarget.value });
  return html`<form
    role="search"
    class="filters"
    aria-label="Find items"
    novalidate
    onSubmit=${(event) => {
      event.preventDefault();
      apply(draft);
    }}
  >
    <div class="field grow">
      <label for="item-search">Search</label>
      <input
        id="item-search"
        ref=${search}
        type="search"
        value=${draft.q || ""}
        onInput=${set("q")}
        aria-describedby="item-search-hint"
        aria-keyshortcuts="/"
      />
      <p class="hint" id="item-search-hint">SKU or name. Press / to come back here.</p>
    </div>
    <div class="field">
      <label for="item-stock">Stock</label>
      <select id="item-stock" value=${draft.in_stock || ""} onChange=${setAndApply("in_stock")}>
        <option value="">Any</option>
        <option value="true">In stock</option>
        <option value="false">Out of stock</option>
      </select>
    </div>
    <div class="field">
      <span class="label-like" aria-hidden="true"> </span>
      <label class="check">
        <input
          type="checkbox"
          checked=${draft.low_stock === "true"}
          onChange=${(event) => apply({ ...draft, low_stock: event.currentTarget.checked ? "true" : "" })}
        />
        At or below reorder point
      </label>
    </div>
    <${Field}
      id="item-min-price"
      label="Lowest price"
      inputmode="decimal"
      value=${draft.min_price || ""}
      onInput=${set("min_price")}
      error=${errors.min_price}
    />
    <${Field}
      id="item-max-price"
      label="Highest price"
      inputmode="decimal"
      value=${draft.max_price || ""}
      onInput=${set("max_price")}
      error=${errors.max_price}
    />
    <div class="field">
      <label for="item-sort">Sort</label>
      <select id="item-sort" value=${draft.sort || "id"} onChange=${setAndApply("sort")}>
        ${SORTS.map(([value, label]) => html`<option value=${value}>${label}</option>`)}
      </select>
    </div>
    <div class="field actions">
      <button type="submit">Apply filters</button>
      <a href="#/items" class="button quiet">Clear</a>
    </div>
  </form>`;
}

function queryErrors(error) {
  const byField = {};
  for (const entry of error?.errors || []) {
    const [where, name] = entry.loc || [];
    if (where === "query" && name && !(name in byField)) byField[name] = entry.msg;
  }
  return byField;
}

export function ItemsPage({ params, me }) {
  const filters = filtersOf(params);
  const cursor = params.get("cursor") || "";
  const queryKey = JSON.stringify([filters, cursor]);
  const [page, setPage] = useState(null);
  const [error, setError] = useState(null);
  const [loading, setLoading] = useState(true);
  const [creating, setCreating] = useState(false);
  const [refresh, setRefresh] = useState(0);

  useEffect(() => {
    let current = true;
    setLoading(true);
    api
      .listItems({ ...filters, cursor, limit: PAGE_SIZE, count: true })
      .then(({ data }) => {
        if (!current) return;
        setPage(data);
        setError(null);
      })
      .catch((failure) => current && setError(failure))
      .finally(() => current && setLoading(false));
    return () => {
      current = false;
    };
  }, [queryKey, refresh]);

  // Live: rows on this page change in place; an item created or deleted elsewhere
  // re-reads this page (the same cursor and filters).
  useEffect(() => {
    let timer = null;
    const reread = () => {
      clearTimeout(timer);
      timer = setTimeout(() => setRefresh((n) => n + 1), 200);
    };
    const stop = onChange((event) => {
      const { type, data } = event;
      if (type === "item.updated") {
        setPage((old) => old && { ...old, data: old.data.map((row) => (row.id === data.id ? data : row)) });
        announce(`${data.name} was changed.`);
      } else if (type === "stock.adjusted") {
        setPage((old) => {
          if (!old) return old;
          const row = old.data.find((r) => r.id === data.item_id);
          if (row) announce(`${row.name}: quantity now ${formatInteger(data.quantity_after)}.`);
          return {
            ...old,
            data: old.data.map((r) => (r.id === data.item_id ? { ...r, quantity: data.quantity_after } : r)),
          };
        });
      } else if (type === "item.created") {
        announce(`New item: ${data.name}.`);
        reread();
      } else if (type === "item.deleted") {
        announce(`Item ${data.sku} was deleted.`);
        reread();
      } else if (type === "resync") {
        reread();
      }
    });
    return () => {
      stop();
      clearTimeout(timer);
    };
  }, []);

  const canWrite = me.scopes.includes("write");
  const rows = page?.data || [];
  const next = page?.next_cursor;
  const goNext = () => {
    previousCursor.set(next, cursor);
    navigate("/items", { ...filters, cursor: next });
  };
  const goPrevious = () => {
    const before = previousCursor.get(cursor) || "";
    navigate("/items", before ? { ...filters, cursor: before } : filters);
  };
  const total = page && typeof page.total === "number" ? page.total : null;
  const [exportError, setExportError] = useState(null);
  const download = (format) => async () => {
    setExportError(null);
    try {
      await downloadExport(format, filters);
    } catch (failure) {
      setExportError(failure.detail);
    }
  };

  return html`<section class="items">
    <div class="page-head">
      <h1 tabindex="-1">Items</h1>
      <div class="actions">
        ${canWrite
          ? html`<button type="button" onClick=${() => setCreating(true)}>New item</button>`
          : null}
        <button type="button" class="quiet" onClick=${download("csv")}>Download CSV</button>
        <button type="button" class="quiet" onClick=${download("ndjson")}>Download NDJSON</button>
      </div>
    </div>
    <${Alert}>${exportError}<//>
    <${Filters} filters=${filters} errors=${queryErrors(error)} />
    <${Alert}>${error && !Object.keys(queryErrors(error)).length ? error.detail : null}<//>
    <p class="summary" aria-live="polite">
      ${total === null
        ? "\u00a0"
        : `${page.total_exact === false ? "About " : ""}${formatInteger(total)} ${
            total === 1 ? "item" : "items"
          } match.`}
    </p>
    <div class="table-wrap" aria-busy=${loading ? "true" : "false"}>
      <table>
        <caption class="visually-hidden">Items, ${PAGE_SIZE} a page</caption>
        <thead>
          <tr>
            <th scope="col">SKU</th>
            <th scope="col">Name</th>
            <th scope="col" class="number">Price</th>
            <th scope="col" class="number">Quantity</th>
            <th scope="col">Changed</th>
          </tr>
        </thead>
        <tbody>
          ${rows.map(
            (item) => html`<tr key=${item.id}>
              <td><code>${item.sku}</code></td>
              <td><a href=${hrefOf(`/items/${item.id}`)}>${item.name}</a></td>
              <td class="number">${formatMoney(item.price)}</td>
              <td class="number">${formatInteger(item.quantity)}</td>
              <td><time datetime=${item.updated_at}>${formatTime(item.updated_at)}</time></td>
            </tr>`,
          )}
          ${page && !rows.length
            ? html`<tr><td colspan="5">No item matches these filters.</td></tr>`
            : null}
        </tbody>
      </table>
    </div>
    <nav class="pager" aria-label="Pages">
      <button type="button" onClick=${goPrevious} disabled=${!cursor}>Previous page</button>
      <button type="button" onClick=${goNext} disabled=${!next}>Next page</button>
    </nav>
    ${canWrite
      ? html`<${CreateItem} open=${creating} onClose=${() => setCreating(false)} />`
      : null}
  </section>`;
}

const EMPTY = { sku: "", name: "", price: "", quantity: "", reorder_point: "", description: "" };

/** A whole number typed in a field, as the API takes it (anything else as typed: a 422 says). */
export const wholeNumber = (text) => {
  const number = Number(text);
  return text.trim() !== "" && Number.isInteger(number) ? number : text;
};

function CreateItem({ open, onClose }) {
  const [values, setValues] = useState(EMPTY);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    if (open) {
      setValues(EMPTY);
      setError(null);
    }
  }, [open]);
  const errors = fieldErrors(error);
  const set = (name) => (event) => setValues({ ...values, [name]: event.currentTarget.value });
  const submit = async (event) => {
    event.preventDefault();
    if (busy) return;
    const body = { sku: values.sku, name: values.name, price: values.price };
    if (values.description) body.description = values.description;
    if (values.quantity !== "") body.quantity = wholeNumber(values.quantity);
    if (values.reorder_point !== "") body.reorder_point = wholeNumber(values.reorder_point);
    setBusy(true);
    try {
      const { data } = await api.createItem(body);
      announce(`Created ${data.name}.`);
      onClose();
      navigate(`/items/${data.id}`);
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  };
  const unplaced = error && !Object.keys(errors).length ? error.detail : null;
  return html`<${Dialog} id="create-item" title="New item" open=${open} onClose=${onClose}>
    <form method="dialog" novalidate onSubmit=${submit}>
      <${Alert}>${unplaced}<//>
      <${Field} id="new-sku" label="SKU" value=${values.sku} onInput=${set("sku")} error=${errors.sku}
        hint="Letters, digits, '.', '_' and '-'; unique." autocomplete="off" />
      <${Field} id="new-name" label="Name" value=${values.name} onInput=${set("name")} error=${errors.name} />
      <${Field} id="new-price" label="Price" inputmode="decimal" value=${values.price}
        onInput=${set("price")} error=${errors.price} hint="For example 12.50" />
      <${Field} id="new-quantity" label="Starting quantity" inputmode="numeric" value=${values.quantity}
        onInput=${set("quantity")} error=${errors.quantity} hint="Optional; 0 when empty." />
      <${Field} id="new-reorder-point" label="Reorder point" inputmode="numeric" value=${values.reorder_point}
        onInput=${set("reorder_point")} error=${errors.reorder_point}
        hint="Optional: the item counts as low at or below this quantity." />
      <${Field} id="new-description" label="Description" multiline value=${values.description}
        onInput=${set("description")} error=${errors.description} />
      <div class="actions">
        <button type="submit" disabled=${busy}>Create item</button>
        <button type="button" class="quiet" onClick=${onClose}>Cancel</button>
      </div>
    </form>
  <//>`;
}
