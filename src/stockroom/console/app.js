// The console's shell: sign-in, the scopes of the key, navigation, the live indicator and
// the theme. Pages are in their own modules; every API call goes through api.js.

import { html, render, useEffect, useRef, useState } from "./vendor/preact-htm.js";
import { api, forgetKey, onUnauthorized, storedKey, storeKey } from "./api.js";
import { onStatus, startLive, stopLive } from "./live.js";
import { Announcer, Alert, useRoute } from "./ui.js";
import { ItemsPage } from "./items.js";
import { ItemPage } from "./item.js";
import { KeysPage, WebhookPage, WebhooksPage } from "./admin.js";
import { ImportPage } from "./import.js";
import { OverviewPage } from "./overview.js";

const REFUSED =
  "Your API key was not accepted: it is unknown or has been revoked. Sign in with a valid key.";

// --- The theme: the system's choice unless the user picked one (kept in localStorage).

const THEMES = ["system", "light", "dark"];

function applyTheme(theme) {
  if (theme === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
}

function ThemeToggle() {
  const [theme, setTheme] = useState(() => localStorage.getItem("stockroom.theme") || "system");
  useEffect(() => applyTheme(theme), [theme]);
  const next = THEMES[(THEMES.indexOf(theme) + 1) % THEMES.length];
  const choose = () => {
    localStorage.setItem("stockroom.theme", next);
    setTheme(next);
  };
  return html`<button type="button" class="quiet" onClick=${choose} title=${`Switch to ${next}`}>
    Theme: ${theme}
  </button>`;
}

function LiveIndicator() {
  const [status, setStatus] = useState("off");
  useEffect(() => onStatus(setStatus), []);
  const text = { live: "Live", off: "Offline", connecting: "Connecting…" }[status] || "Reconnecting…";
  return html`<span class=${`live live-${status}`} role="status">${text}</span>`;
}

// --- Sign-in.

function SignIn({ notice, onSignedIn }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event) => {
    event.preventDefault();
    const presented = key.trim();
    if (!presented) {
      setError("Paste your API key first.");
      return;
    }
    setBusy(true);
    setError(null);
    storeKey(presented);
    try {
      const me = (await api.me()).data;
      setKey("");
      onSignedIn(me);
    } catch (failure) {
      forgetKey();
      if (failure.status !== 401) setError(failure.detail);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="sign-in" id="main">
    <h1>Stockroom</h1>
    <p>Sign in with an API key. It is kept in this tab only, until you sign out or close it.</p>
    <${Alert}>${notice}<//>
    <form method="post" onSubmit=${submit} novalidate>
      <div class="field">
        <label for="api-key">API key</label>
        <input
          id="api-key"
          type="password"
          autocomplete="off"
          spellcheck="false"
          value=${key}
          onInput=${(e) => setKey(e.currentTarget.value)}
          aria-invalid=${error ? "true" : undefined}
          aria-describedby=${error ? "api-key-error" : "api-key-hint"}
        />
        <p class="hint" id="api-key-hint">
          An operator makes one with <code>stockroom apikey create</code>.
        </p>
        ${error ? html`<p class="field-error" id="api-key-error">${error}</p>` : null}
      </div>
      <button type="submit" disabled=${busy}>Sign in</button>
    </form>
  </main>`;
}

// --- The pages, by the hash's path.

function Page({ route, me }) {
  const { path, params } = route;
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "items" && parts.length === 1) return html`<${ItemsPage} params=${params} me=${me} />`;
  if (parts[0] === "items" && parts.length === 2 && /^\d+$/.test(parts[1]))
    return html`<${ItemPage} key=${parts[1]} id=${Number(parts[1])} params=${params} me=${me} />`;
  if (path === "/overview") return html`<${OverviewPage} />`;
  if (path === "/import" && me.scopes.includes("write")) return html`<${ImportPage} />`;
  if (me.scopes.includes("admin")) {
    if (path === "/keys") return html`<${KeysPage} me=${me} />`;
    if (path === "/webhooks") return html`<${WebhooksPage} />`;
    if (parts[0] === "webhooks" && parts.length === 2)
      return html`<${WebhookPage} key=${parts[1]} id=${decodeURIComponent(parts[1])} />`;
  }
  return html`<section>
    <h1 tabindex="-1">Not found</h1>
    <p>There is no such page here. <a href="#/items">Go to the items.</a></p>
  </section>`;
}

function Shell({ me, onSignOut }) {
  const route = useRoute();
  const main = useRef(null);
  const section = route.path.split("/")[1] || "items";
  // A new page (not new filters on the same page): focus its heading, as a page load would.
  const shown = useRef(route.path);
  useEffect(() => {
    if (shown.current === route.path) return;
    shown.current = route.path;
    main.current?.querySelector("h1")?.focus();
  }, [route.path]);
  const link = (href, name, label) =>
    html`<li><a href=${href} aria-current=${section === name ? "page" : undefined}>${label}</a></li>`;
  return html`<div class="shell">
    <a class="skip" href="#main" onClick=${(e) => {
      e.preventDefault();
      main.current?.querySelector("h1")?.focus();
    }}>Skip to content</a>
    <header class="top">
      <span class="brand">Stockroom</span>
      <nav aria-label="Sections">
        <ul>
          ${link("#/overview", "overview", "Overview")}
          ${link("#/items", "items", "Items")}
          ${me.scopes.includes("write") ? link("#/import", "import", "Import") : null}
          ${me.scopes.includes("admin") ? link("#/keys", "keys", "API keys") : null}
          ${me.scopes.includes("admin") ? link("#/webhooks", "webhooks", "Webhooks") : null}
        </ul>
      </nav>
      <div class="session">
        <${LiveIndicator} />
        <span class="who">
          ${me.name ?? "Authentication off"} (${me.scopes.length ? me.scopes.join(", ") : "no scopes"})
        </span>
        <${ThemeToggle} />
        <button type="button" class="quiet" onClick=${onSignOut}>Sign out</button>
      </div>
    </header>
    <main id="main" ref=${main}>
      <${Page} route=${route} me=${me} />
    </main>
  </div>`;
}

function App() {
  const [me, setMe] = useState(null);
  const [checking, setChecking] = useState(() => Boolean(storedKey()));
  const [notice, setNotice] = useState(null);

  const signOut = (message = null) => {
    forgetKey();
    stopLive();
    setMe(null);
    setNotice(message);
  };

  useEffect(() => {
    onUnauthorized(() => signOut(REFUSED));
    if (storedKey()) {
      api
        .me()
        .then(({ data }) => setMe(data))
        .catch((error) => error.status !== 401 && setNotice(error.detail))
        .finally(() => setChecking(false));
    }
  }, []);

  useEffect(() => {
    if (me) startLive();
  }, [me]);

  if (checking) return html`<main id="main" class="sign-in"><h1>Stockroom</h1><p>Loading…</p></main>`;
  return html`
    ${me
      ? html`<${Shell} me=${me} onSignOut=${() => signOut(null)} />`
      : html`<${SignIn} notice=${notice} onSignedIn=${(data) => { setNotice(null); setMe(data); }} />`}
    <${Announcer} />
  `;
}

applyTheme(localStorage.getItem("stockroom.theme") || "system");
render(html`<${App} />`, document.getElementById("app"));
