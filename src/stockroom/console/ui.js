// Shared pieces of the pages: the hash router, dialogs, field errors, announcements.

import { html, useEffect, useRef, useState } from "./vendor/preact-htm.js";

// --- Routing: everything after "#" is the page and its filters, e.g. #/items?q=oak.
// Back, Forward and a shared link keep them; the server has one page to serve.

export function parseHash() {
  const text = location.hash.replace(/^#/, "") || "/items";
  const [path, query = ""] = text.split("?");
  return { path, params: new URLSearchParams(query) };
}

export function hrefOf(path, params) {
  const query = params ? new URLSearchParams(params).toString() : "";
  return `#${path}${query ? `?${query}` : ""}`;
}

/** A new history entry (so that Back returns to what was shown before). */
export function navigate(path, params) {
  location.hash = hrefOf(path, params);
}

export function useRoute() {
  const [route, setRoute] = useState(parseHash);
  useEffect(() => {
    const changed = () => setRoute(parseHash());
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
}

// --- Announcements for screen readers: one polite live region in the shell.

const announcers = new Set();

export function announce(text) {
  for (const announcer of announcers) announcer(text);
}

export function Announcer() {
  const [text, setText] = useState("");
  useEffect(() => {
    const show = (next) => setText(next);
    announcers.add(show);
    return () => announcers.delete(show);
  }, []);
  return html`<div class="visually-hidden" aria-live="polite" aria-atomic="true">${text}</div>`;
}

// --- A modal <dialog>, opened and closed by `open`; Escape or Cancel calls onClose.

export function Dialog({ open, title, id, onClose, children }) {
  const ref = useRef(null);
  useEffect(() => {
    const dialog = ref.current;
    if (open && !dialog.open) dialog.showModal();
    if (!open && dialog.open) dialog.close();
  }, [open]);
  return html`<dialog
    ref=${ref}
    id=${id}
    aria-labelledby=${`${id}-title`}
    onClose=${() => open && onClose()}
  >
    <h2 id=${`${id}-title`}>${title}</h2>
    ${open ? children : null}
  </dialog>`;
}

// --- A labelled input with its error tied to it (aria-invalid, aria-describedby).

export function Field({ id, label, error, hint, multiline, ...input }) {
  const describedBy = [error ? `${id}-error` : null, hint ? `${id}-hint` : null]
    .filter(Boolean)
    .join(" ");
  const props = {
    id,
    "aria-invalid": error ? "true" : undefined,
    "aria-describedby": describedBy || undefined,
    ...input,
  };
  return html`<div class="field">
    <label for=${id}>${label}</label>
    ${multiline ? html`<textarea ...${props}></textarea>` : html`<input ...${props} />`}
    ${hint ? html`<p class="hint" id=${`${id}-hint`}>${hint}</p>` : null}
    ${error ? html`<p class="field-error" id=${`${id}-error`}>${error}</p>` : null}
  </div>`;
}

/** An error sentence shown where it happened, read out at once. */
export function Alert({ children }) {
  return children ? html`<p class="alert" role="alert">${children}</p>` : null;
}

/** A button that copies a text shown once (a new key, a webhook's secret). */
export function CopyButton({ text, label }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
      setCopied(true);
      announce("Copied.");
    } catch {
      setCopied(false);
      announce("Copying was refused by the browser: select the text and copy it.");
    }
  };
  return html`<button type="button" onClick=${copy}>${copied ? "Copied" : label}</button>`;
}
