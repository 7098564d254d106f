// The one module that talks to the API: every call of the console goes through `call`.
// It adds the key, If-Match and a fresh Idempotency-Key where asked, and turns every
// problem+json answer (and a network failure) into one error shape the pages show.
// The key lives in sessionStorage only: never in a URL, never logged.
// Read-your-writes across read replicas: the greatest `Consistency-Token` the service has
// answered with (tokens order as strings) is kept and sent with every call, so a page never
// shows less than what this tab has written or seen (docs/api.md, "Replicas").

const KEY_STORAGE = "stockroom.key";
const TOKEN_STORAGE = "stockroom.consistency";
const TOKEN_HEADER = "Consistency-Token";

function noteToken(token) {
  if (token && token > (sessionStorage.getItem(TOKEN_STORAGE) || "")) {
    sessionStorage.setItem(TOKEN_STORAGE, token);
  }
}

function withToken(headers) {
  const token = sessionStorage.getItem(TOKEN_STORAGE);
  if (token) headers[TOKEN_HEADER] = token;
  return headers;
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || "The request failed.");
    this.status = status;
    this.type = (problem.type || "").split("/").pop();
    this.title = problem.title || "";
    this.detail = problem.detail || this.message;
    this.errors = Array.isArray(problem.errors) ? problem.errors : [];
    this.problem = problem;
  }
}

let unauthorized = () => {};

/** What to do when the API refuses the key (401): the shell signs out. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function storeKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
  sessionStorage.removeItem(TOKEN_STORAGE);
}

function withQuery(path, query) {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

async function problemOf(response) {
  try {
    return await response.json();
  } catch {
    return { title: response.statusText, detail: `The service answered ${response.status}.` };
  }
}

/**
 * One API call. Options: `query` (an object), `body` (sent as JSON), `ifMatch` (an ETag),
 * `idempotent` (a fresh Idempotency-Key for this attempt), `signal` (an AbortSignal: a
 * call aborted rejects with an ApiError of status 0, which its caller ignores). Resolves to
 * `{status, etag, data}`; rejects with an ApiError.
 */
export async function call(method, path, { query, body, ifMatch, idempotent, signal } = {}) {
  const headers = { Accept: "application/json" };
  const key = storedKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (ifMatch) headers["If-Match"] = ifMatch;
  if (idempotent) headers["Idempotency-Key"] = crypto.randomUUID();
  withToken(headers);
  let response;
  try {
    response = await fetch(withQuery(path, query), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      signal,
    });
  } catch {
    throw new ApiError(0, {
      title: "No answer",
      detail: "The service could not be reached. Check the connection and try again.",
    });
  }
  noteToken(response.headers.get(TOKEN_HEADER));
  if (!response.ok) {
    const error = new ApiError(response.status, await problemOf(response));
    error.etag = response.headers.get("ETag");
    if (response.status === 401) unauthorized(error);
    throw error;
  }
  // 204, and 202 answers without a body (a delivery's retry), carry no JSON.
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  return { status: response.status, etag: response.headers.get("ETag"), data };
}

export const api = {
  me: () => call("GET", "/me"),
  listItems: (query) => call("GET", "/items", { query }),
  getItem: (id) => call("GET", `/items/${id}`),
  summary: () => call("GET", "/items/summary"),
  readiness: () => call("GET", "/readyz"),
  createItem: (body) => call("POST", "/items", { body, idempotent: true }),
  updateItem: (id, body, etag) => call("PATCH", `/items/${id}`, { body, ifMatch: etag }),
  deleteItem: (id, etag) => call("DELETE", `/items/${id}`, { ifMatch: etag }),
  listAdjustments: (id, query, signal) =>
    call("GET", `/items/${id}/adjustments`, { query, signal }),
  history: (id, query, signal) => call("GET", `/items/${id}/history`, { query, signal }),
  adjust: (id, body) => call("POST", `/items/${id}/adjustments`, { body, idempotent: true }),
  streamToken: () => call("POST", "/events/tokens"),
  exportToken: () => call("POST", "/items/export/tokens"),
  listKeys: () => call("GET", "/keys"),
  createKey: (body) => call("POST", "/keys", { body }),
  revokeKey: (name) => call("DELETE", `/keys/${encodeURIComponent(name)}`),
  listWebhooks: (query) => call("GET", "/webhooks", { query }),
  getWebhook: (id) => call("GET", `/webhooks/${encodeURIComponent(id)}`),
  createWebhook: (body) => call("POST", "/webhooks", { body }),
  deleteWebhook: (id) => call("DELETE", `/webhooks/${encodeURIComponent(id)}`),
  listDeliveries: (id, query) =>
    call("GET", `/webhooks/${encodeURIComponent(id)}/deliveries`, { query }),
  retryDelivery: (id, deliveryId) =>
    call("POST", `/webhooks/${encodeURIComponent(id)}/deliveries/${deliveryId}/retry`),
};

/**
 * Downloads an export of the list's filters as a file of any size: a short-lived export
 * token, then a plain link the browser saves (the key never goes in the URL).
 */
export async function downloadExport(format, filters) {
  const { data } = await api.exportToken();
  const query = new URLSearchParams({ ...filters, format, token: data.token });
  const link = document.createElement("a");
  link.href = `/items/export?${query}`;
  link.download = "";
  document.body.append(link);
  link.click();
  link.remove();
}

/** The message of a 422's errors for one field (`loc` [..., field]), or null. */
export function fieldErrors(error) {
  const byField = {};
  if (!(error instanceof ApiError)) return byField;
  for (const entry of error.errors) {
    const loc = entry.loc || [];
    const field = loc[0] === "body" && loc.length > 1 ? String(loc[1]) : null;
    if (field && !(field in byField)) byField[field] = entry.msg;
  }
  return byField;
}

/**
 * POST /items/import with the file as its body, streamed by the browser, with upload progress
 * (`onProgress(fraction)`; fetch has none, hence XMLHttpRequest). `mode`: "dry-run",
 * "atomic" or none. Resolves to `{status, data}` (the report); rejects with an ApiError whose
 * `problem` holds the report of a refused (422) import.
 */
export function uploadImport(file, { mode, onProgress } = {}) {
  const ndjson = /\.(ndjson|jsonl)$/i.test(file.name);
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", mode ? `/items/import?mode=${encodeURIComponent(mode)}` : "/items/import");
    const key = storedKey();
    if (key) request.setRequestHeader("Authorization", `Bearer ${key}`);
    request.setRequestHeader("Accept", "application/json");
    for (const [name, value] of Object.entries(withToken({}))) request.setRequestHeader(name, value);
    request.setRequestHeader("Content-Type", ndjson ? "application/x-ndjson" : "text/csv");
    request.upload.onprogress = (event) => {
      if (event.lengthComputable && onProgress) onProgress(event.loaded / event.total);
    };
    request.onload = () => {
      noteToken(request.getResponseHeader(TOKEN_HEADER));
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch {
        body = null;
      }
      if (request.status >= 200 && request.status < 300) {
        resolve({ status: request.status, data: body });
        return;
      }
      const error = new ApiError(
        request.status,
        body || { title: request.statusText, detail: `The service answered ${request.status}.` },
      );
      if (request.status === 401) unauthorized(error);
      reject(error);
    };
    request.onerror = () =>
      reject(
        new ApiError(0, {
          title: "No answer",
          detail: "The service could not be reached. Check the connection and try again.",
        }),
      );
    request.send(file);
  });
}
