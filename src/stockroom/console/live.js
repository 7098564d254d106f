// The live change stream: a stream token, then EventSource on GET /events?token=...
// The browser reconnects by itself after a drop (sending Last-Event-ID); when it gives up
// (the token expired, or the service refused the stream) a fresh token and a new
// EventSource resume with ?after=<the last id handled>. A token is renewed before it ends.
// When the cursor has to be dropped (see GIVE_UP_CURSOR_AFTER), changes may have been missed:
// once the new stream is open, listeners get `{type: "resync"}` and read their data again.

import { api } from "./api.js";

const TYPES = ["item.created", "item.updated", "item.deleted", "stock.adjusted", "stock.low"];
// A token is renewed ahead of its expiry (a minute ahead, or a quarter of its life if shorter):
// the stream it opened is replaced before the service ends it.
const RENEW_AHEAD_MS = 60_000;
const RETRY_MS = [500, 1000, 2000, 5000, 10000];
// After this many failed attempts in a row with a cursor, start again without it: the
// cursor may have expired (410), and the page had better go on live than not at all.
const GIVE_UP_CURSOR_AFTER = 4;

const listeners = new Set();
const statusListeners = new Set();
let source = null;
let lastId = null;
let status = "off";
let renewTimer = null;
let retryTimer = null;
let failures = 0;
let running = false;
let gap = false; // the cursor was dropped: changes may be missing until a resync

function setStatus(next) {
  status = next;
  for (const listener of statusListeners) listener(next);
}

function deliver(message) {
  lastId = message.lastEventId || lastId;
  let event;
  try {
    event = JSON.parse(message.data);
  } catch {
    return;
  }
  for (const listener of listeners) listener(event);
}

function close() {
  clearTimeout(renewTimer);
  clearTimeout(retryTimer);
  if (source) source.close();
  source = null;
}

function retryLater() {
  close();
  if (!running) return;
  setStatus("reconnecting");
  const delay = RETRY_MS[Math.min(failures, RETRY_MS.length - 1)];
  failures += 1;
  if (failures >= GIVE_UP_CURSOR_AFTER && lastId) {
    lastId = null;
    gap = true;
  }
  retryTimer = setTimeout(open, delay);
}

async function open() {
  close();
  if (!running) return;
  let token;
  try {
    token = (await api.streamToken()).data;
  } catch (error) {
    // A 401 signs the user out (api.js); anything else: try again later.
    if (error.status !== 401) retryLater();
    return;
  }
  if (!running) return;
  const query = new URLSearchParams({ token: token.token });
  if (lastId) query.set("after", lastId);
  const stream = new EventSource(`/events?${query}`);
  source = stream;
  stream.onopen = () => {
    failures = 0;
    setStatus("live");
    if (gap) {
      gap = false;
      for (const listener of listeners) listener({ type: "resync" });
    }
  };
  stream.onerror = () => {
    if (stream !== source) return;
    if (stream.readyState === EventSource.CLOSED) retryLater();
    else setStatus("reconnecting");
  };
  for (const type of TYPES) stream.addEventListener(type, deliver);
  const life = Date.parse(token.expires_at) - Date.now();
  renewTimer = setTimeout(open, Math.max(life - Math.min(RENEW_AHEAD_MS, life / 4), 1000));
}

/** Start following the stream (after sign-in). */
export function startLive() {
  if (running) return;
  running = true;
  setStatus("connecting");
  open();
}

/** Stop (sign-out): the stream closes and nothing is kept. */
export function stopLive() {
  running = false;
  lastId = null;
  gap = false;
  close();
  setStatus("off");
}

/** Calls `listener(event)` for each change, and `listener({type: "resync"})` after a gap
 * in the stream (read everything shown again); returns the function that stops it. */
export function onChange(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function onStatus(listener) {
  statusListeners.add(listener);
  listener(status);
  return () => statusListeners.delete(listener);
}
