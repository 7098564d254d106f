// Administration (admin keys only; the shell shows these pages to no one else):
// API keys and webhooks, with their secrets shown once, and a webhook's deliveries.

import { html, useEffect, useState } from "./vendor/preact-htm.js";
import { api, fieldErrors } from "./api.js";
import { formatInteger, formatTime } from "./format.js";
import { onChange } from "./live.js";
import { Alert, CopyButton, Dialog, Field, announce, hrefOf, navigate } from "./ui.js";

const SCOPES = ["read", "write", "admin"];
const EVENT_TYPES = ["item.created", "item.updated", "item.deleted", "stock.adjusted", "stock.low"];
const REFRESH_MS = 3000;

function useLoad(load, deps) {
  const [state, setState] = useState({ data: null, error: null });
  const [again, setAgain] = useState(0);
  useEffect(() => {
    let current = true;
    load()
      .then(({ data }) => current && setState({ data, error: null }))
      .catch((error) => current && setState((old) => ({ ...old, error })));
    return () => {
      current = false;
    };
  }, [...deps, again]);
  return [state, () => setAgain((n) => n + 1)];
}

/** A secret shown once, with a copy button. */
function ShownOnce({ label, value, onDone }) {
  return html`<div class="shown-once" role="region" aria-label=${label}>
    <p><strong>${label}</strong>: copy it now, it will not be shown again.</p>
    <p><code class="secret">${value}</code></p>
    <div class="actions">
      <${CopyButton} text=${value} label="Copy" />
      <button type="button" class="quiet" onClick=${onDone}>Done</button>
    </div>
  </div>`;
}

// --- API keys.

export function KeysPage({ me }) {
  const [{ data, error }, reload] = useLoad(() => api.listKeys(), []);
  const [name, setName] = useState("");
  const [scope, setScope] = useState("read");
  const [created, setCreated] = useState(null);
  const [createError, setCreateError] = useState(null);
  const [revoking, setRevoking] = useState(null);
  const [revokeError, setRevokeError] = useState(null);
  const errors = fieldErrors(createError);
  const create = async (event) => {
    event.preventDefault();
    try {
      const { data: key } = await api.createKey({ name, scopes: [scope] });
      setCreated(key);
      setName("");
      setCreateError(null);
      announce(`Key ${key.name} created.`);
      reload();
    } catch (failure) {
      setCreateError(failure);
    }
  };
  const revoke = async () => {
    try {
      await api.revokeKey(revoking);
      announce(`Key ${revoking} revoked.`);
      setRevoking(null);
      reload();
    } catch (failure) {
      setRevokeError(failure);
    }
  };
  const keys = data?.data || [];
  return html`<section>
    <h1 tabindex="-1">API keys</h1>
    <${Alert}>${error?.detail}<//>
    ${created
      ? html`<${ShownOnce} label=${`The key ${created.name}`} value=${created.key} onDone=${() => setCreated(null)} />`
      : null}
    <form class="inline-form" novalidate onSubmit=${create} aria-labelledby="new-key-title">
      <h2 id="new-key-title">New key</h2>
      <${Field} id="key-name" label="Name" value=${name} onInput=${(e) => setName(e.currentTarget.value)}
        error=${errors.name} autocomplete="off" />
      <div class="field">
        <label for="key-scope">Scope</label>
        <select id="key-scope" value=${scope} onChange=${(e) => setScope(e.currentTarget.value)}>
          ${SCOPES.map((s) => html`<option value=${s}>${s}</option>`)}
        </select>
      </div>
      <${Alert}>${createError && !Object.keys(errors).length ? createError.detail : null}<//>
      <div class="field actions"><button type="submit">Create key</button></div>
    </form>
    <div class="table-wrap">
      <table>
        <caption class="visually-hidden">API keys</caption>
        <thead>
          <tr><th scope="col">Name</th><th scope="col">Scopes</th><th scope="col">Created</th>
            <th scope="col">Revoked</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr>
        </thead>
        <tbody>
          ${keys.map(
            (key) => html`<tr key=${key.name}>
              <td>${key.name}${key.name === me.name ? " (this key)" : ""}</td>
              <td>${key.scopes.join(", ")}</td>
              <td><time datetime=${key.created_at}>${formatTime(key.created_at)}</time></td>
              <td>${key.revoked_at ? html`<time datetime=${key.revoked_at}>${formatTime(key.revoked_at)}</time>` : "No"}</td>
              <td>${key.revoked_at
                ? null
                : html`<button type="button" class="danger" aria-label=${`Revoke ${key.name}`}
                    onClick=${() => { setRevokeError(null); setRevoking(key.name); }}>Revoke</button>`}</td>
            </tr>`,
          )}
        </tbody>
      </table>
    </div>
    <${Dialog} id="revoke-key" title="Revoke this key?" open=${revoking !== null} onClose=${() => setRevoking(null)}>
      <p>Every client using <strong>${revoking}</strong> will be refused from now on. This cannot be undone.</p>
      <${Alert}>${revokeError?.detail}<//>
      <div class="actions">
        <button type="button" class="danger" onClick=${revoke}>Revoke</button>
        <button type="button" class="quiet" onClick=${() => setRevoking(null)}>Keep it</button>
      </div>
    <//>
  </section>`;
}

// --- Webhooks.

export function WebhooksPage() {
  const [{ data, error }, reload] = useLoad(() => api.listWebhooks({ limit: 100 }), []);
  const [url, setUrl] = useState("");
  const [events, setEvents] = useState(["*"]);
  const [created, setCreated] = useState(null);
  const [createError, setCreateError] = useState(null);
  const errors = fieldErrors(createError);
  const toggle = (type) => (event) => {
    const rest = events.filter((e) => e !== type && e !== "*");
    if (type === "*") setEvents(event.currentTarget.checked ? ["*"] : []);
    else setEvents(event.currentTarget.checked ? [...rest, type] : rest);
  };
  const create = async (event) => {
    event.preventDefault();
    try {
      const { data: hook } = await api.createWebhook({ url, events });
      setCreated(hook);
      setUrl("");
      setCreateError(null);
      announce("Webhook created.");
      reload();
    } catch (failure) {
      setCreateError(failure);
    }
  };
  const hooks = data?.data || [];
  return html`<section>
    <h1 tabindex="-1">Webhooks</h1>
    <${Alert}>${error?.detail}<//>
    ${created
      ? html`<${ShownOnce} label="The webhook's signing secret" value=${created.secret} onDone=${() => setCreated(null)} />`
      : null}
    <form class="inline-form" novalidate onSubmit=${create} aria-labelledby="new-hook-title">
      <h2 id="new-hook-title">New webhook</h2>
      <${Field} id="hook-url" label="URL" type="url" value=${url} onInput=${(e) => setUrl(e.currentTarget.value)}
        error=${errors.url} hint="http:// or https://; it receives a POST per event." />
      <fieldset aria-describedby=${errors.events ? "hook-events-error" : undefined}>
        <legend>Events</legend>
        ${["*", ...EVENT_TYPES].map(
          (type) => html`<label class="check">
            <input type="checkbox" checked=${events.includes(type)} onChange=${toggle(type)} />
            ${type === "*" ? "Every event" : type}
          </label>`,
        )}
        ${errors.events ? html`<p class="field-error" id="hook-events-error">${errors.events}</p>` : null}
      </fieldset>
      <${Alert}>${createError && !Object.keys(errors).length ? createError.detail : null}<//>
      <div class="field actions"><button type="submit">Create webhook</button></div>
    </form>
    <div class="table-wrap">
      <table>
        <caption class="visually-hidden">Webhooks</caption>
        <thead><tr><th scope="col">URL</th><th scope="col">Events</th><th scope="col">Created</th></tr></thead>
        <tbody>
          ${hooks.map(
            (hook) => html`<tr key=${hook.id}>
              <td><a href=${hrefOf(`/webhooks/${encodeURIComponent(hook.id)}`)}>${hook.url}</a></td>
              <td>${hook.events.join(", ")}</td>
              <td><time datetime=${hook.created_at}>${formatTime(hook.created_at)}</time></td>
            </tr>`,
          )}
          ${data && !hooks.length ? html`<tr><td colspan="3">No webhook yet.</td></tr>` : null}
        </tbody>
      </table>
    </div>
  </section>`;
}

export function WebhookPage({ id }) {
  const [{ data: hook, error }] = useLoad(() => api.getWebhook(id), [id]);
  const [{ data: attempts, error: attemptsError }, reload] = useLoad(
    () => api.listDeliveries(id, { limit: 100 }),
    [id],
  );
  const [deleting, setDeleting] = useState(false);
  const [deleteError, setDeleteError] = useState(null);
  // Deliveries are not events of the stream, but every change of the stream makes one: the
  // list is read again just after each change (its delivery, then its first attempt's
  // outcome), and every few seconds while the page is shown (retries on their backoff).
  useEffect(() => {
    const timer = setInterval(() => document.visibilityState === "visible" && reload(), REFRESH_MS);
    const soon = [];
    const stop = onChange(() => {
      for (const pending of soon.splice(0)) clearTimeout(pending);
      soon.push(setTimeout(reload, 300), setTimeout(reload, 1500));
    });
    return () => {
      clearInterval(timer);
      for (const pending of soon) clearTimeout(pending);
      stop();
    };
  }, [id]);
  const remove = async () => {
    try {
      await api.deleteWebhook(id);
      announce("Webhook deleted.");
      setDeleting(false);
      navigate("/webhooks");
    } catch (failure) {
      setDeleteError(failure);
    }
  };
  const rows = attempts?.data || [];
  const [retryError, setRetryError] = useState(null);
  // The newest attempt of each event (the list is newest first) carries the retry button.
  const latest = new Set();
  const seen = new Set();
  for (const row of rows) {
    if (!seen.has(row.event_id)) latest.add(row.id);
    seen.add(row.event_id);
  }
  const retry = (row) => async () => {
    setRetryError(null);
    try {
      await api.retryDelivery(id, row.id);
      announce(`Retrying the delivery of ${row.type}.`);
      reload();
    } catch (failure) {
      setRetryError(failure.detail);
    }
  };
  return html`<section>
    <p class="crumbs"><a href="#/webhooks">Webhooks</a></p>
    <div class="page-head">
      <h1 tabindex="-1">Webhook</h1>
      <div class="actions">
        <button type="button" onClick=${reload}>Refresh deliveries</button>
        <button type="button" class="danger" onClick=${() => setDeleting(true)}>Delete webhook</button>
      </div>
    </div>
    <${Alert}>${(error || attemptsError)?.detail}<//>
    ${hook
      ? html`<dl class="fields">
          <dt>URL</dt><dd>${hook.url}</dd>
          <dt>Events</dt><dd>${hook.events.join(", ")}</dd>
          <dt>Created</dt><dd><time datetime=${hook.created_at}>${formatTime(hook.created_at)}</time></dd>
        </dl>`
      : null}
    <h2>Deliveries</h2>
    <p class="hint">Newest first; read again every few seconds.</p>
    <${Alert}>${retryError}<//>
    <div class="table-wrap">
      <table>
        <caption class="visually-hidden">Delivery attempts, newest first</caption>
        <thead>
          <tr><th scope="col">When</th><th scope="col">Event</th><th scope="col" class="number">Attempt</th>
            <th scope="col">Status</th><th scope="col">Answer or error</th><th scope="col">Next attempt</th>
            <th scope="col"><span class="visually-hidden">Actions</span></th></tr>
        </thead>
        <tbody>
          ${rows.map(
            (row) => html`<tr key=${row.id}>
              <td><time datetime=${row.created_at}>${formatTime(row.created_at)}</time></td>
              <td>${row.type}</td>
              <td class="number">${formatInteger(row.attempt)}</td>
              <td><span class=${`status status-${row.status}`}>${row.status}</span></td>
              <td>${row.response_status ? `HTTP ${row.response_status}` : ""}${row.error ? ` ${row.error}` : ""}</td>
              <td>${row.next_attempt_at ? html`<time datetime=${row.next_attempt_at}>${formatTime(row.next_attempt_at)}</time>` : ""}</td>
              <td>${row.status !== "delivered" && latest.has(row.id)
                ? html`<button type="button" onClick=${retry(row)}
                    aria-label=${`Retry ${row.type}, attempt ${row.attempt}`}>Retry now</button>`
                : null}</td>
            </tr>`,
          )}
          ${attempts && !rows.length ? html`<tr><td colspan="7">No delivery attempted yet.</td></tr>` : null}
        </tbody>
      </table>
    </div>
    <${Dialog} id="delete-webhook" title="Delete this webhook?" open=${deleting} onClose=${() => setDeleting(false)}>
      <p>Its pending deliveries and their history go with it.</p>
      <${Alert}>${deleteError?.detail}<//>
      <div class="actions">
        <button type="button" class="danger" onClick=${remove}>Delete</button>
        <button type="button" class="quiet" onClick=${() => setDeleting(false)}>Keep it</button>
      </div>
    <//>
  </section>`;
}
