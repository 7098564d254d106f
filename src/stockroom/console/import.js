// Importing a file: choose it, preview its first rows (read in the browser), check it with a
// dry run (each error with its line, field and message), download the rows with errors to
// fix them, then import. The file is sent as it is, streamed by the browser.

import { html, useState } from "./vendor/preact-htm.js";
import { uploadImport } from "./api.js";
import { formatInteger } from "./format.js";
import { Alert, announce } from "./ui.js";

const PREVIEW_BYTES = 64 * 1024;
const PREVIEW_ROWS = 5;

const isNdjson = (file) => /\.(ndjson|jsonl)$/i.test(file.name);

/**
 * CSV records as RFC 4180 reads them (quotes may hold commas and line breaks), from text that
 * comes in pieces: `push(text)` gives the records complete so far, each with the line it
 * starts on (1 = the header), its cells and its raw text (line end included); `end()` the
 * last one. A record cut between two pieces waits for the rest.
 */
export class CsvReader {
  constructor() {
    this.rest = "";
    this.line = 1; // the line the next record starts on
    this.first = true;
  }

  push(text, final = false, limit = Infinity) {
    let source = this.rest + text;
    if (this.first && source) {
      source = source.replace(/^\uFEFF/, "");
      this.first = false;
    }
    const records = [];
    let cells = [];
    let cell = "";
    let quoted = false;
    let line = this.line;
    let from = 0;
    let i = 0;
    for (; i < source.length && records.length < limit; i++) {
      const c = source[i];
      // A quote or a carriage return at the very end may be half of a pair: wait for more.
      if (!final && i + 1 === source.length && (c === '"' || c === "\r")) break;
      if (quoted) {
        if (c === '"' && source[i + 1] === '"') {
          cell += '"';
          i++;
        } else if (c === '"') {
          quoted = false;
        } else {
          if (c === "\n") line++;
          cell += c;
        }
      } else if (c === '"') {
        quoted = true;
      } else if (c === ",") {
        cells.push(cell);
        cell = "";
      } else if (c === "\n" || c === "\r") {
        if (c === "\r" && source[i + 1] === "\n") i++;
        cells.push(cell);
        records.push({ line: this.line, cells, text: source.slice(from, i + 1) });
        cells = [];
        cell = "";
        line++;
        this.line = line;
        from = i + 1;
      } else {
        cell += c;
      }
    }
    if (final && records.length < limit && (cell !== "" || cells.length)) {
      cells.push(cell);
      records.push({ line: this.line, cells, text: `${source.slice(from)}\n` });
      from = source.length;
    }
    this.rest = source.slice(from);
    return records;
  }

  end() {
    return this.push("", true);
  }
}

/** The records of a whole CSV text (`limit` stops early: a preview). */
function csvRecords(text, limit = Infinity) {
  return new CsvReader().push(text, true, limit);
}

/** NDJSON lines from text that comes in pieces, each with its line number. */
export class NdjsonReader {
  constructor() {
    this.rest = "";
    this.line = 1;
  }

  push(text, final = false) {
    const parts = (this.rest + text).split("\n");
    this.rest = final ? "" : parts.pop();
    if (final && parts[parts.length - 1] === "") parts.pop();
    return parts.map((raw) => ({ line: this.line++, text: `${raw}\n`, raw }));
  }

  end() {
    return this.push("", true);
  }
}

function ndjsonLines(text) {
  return new NdjsonReader().push(text, true);
}

/** The first rows of a file, as a table: {columns, rows}. */
async function previewOf(file) {
  const text = await file.slice(0, PREVIEW_BYTES).text();
  if (isNdjson(file)) {
    const rows = [];
    for (const { raw } of ndjsonLines(text)) {
      if (rows.length >= PREVIEW_ROWS) break;
      if (!raw.trim()) continue;
      try {
        rows.push(JSON.parse(raw));
      } catch {
        break; // the line was cut by the preview's size, or is not JSON: the dry run says
      }
    }
    const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))];
    return { columns, rows: rows.map((row) => columns.map((name) => row[name] ?? "")) };
  }
  const [header, ...rows] = csvRecords(text, PREVIEW_ROWS + 1);
  return { columns: header ? header.cells : [], rows: rows.map((record) => record.cells) };
}

/** A file of the rows the report found errors in (and the CSV header), to fix and re-import:
 * the chosen file is read piece by piece, and only those rows are kept (a file of any size). */
async function erroredRows(file, errors) {
  const lines = new Set(errors.map((error) => error.line));
  const csv = !isNdjson(file);
  const reader = csv ? new CsvReader() : new NdjsonReader();
  const kept = [];
  const keep = (records) => {
    for (const record of records) {
      if (lines.has(record.line) || (csv && record.line === 1)) kept.push(record);
    }
  };
  const pieces = file.stream().pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await pieces.read();
    if (done) break;
    keep(reader.push(value));
  }
  keep(reader.end());
  const blob = new Blob(kept.map((record) => record.text), {
    type: csv ? "text/csv" : "application/x-ndjson",
  });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = file.name.replace(/(\.[^.]+)?$/, "-errors$1");
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

function Report({ report, file }) {
  const { mode, ok, data } = report;
  const title =
    mode === "dry-run"
      ? ok
        ? "Dry run: the file would import cleanly"
        : `Dry run: ${formatInteger(data.failed)} rows with errors, nothing applied`
      : "Imported";
  const errors = data.errors || [];
  return html`<section class="report" aria-labelledby="report-title">
    <h2 id="report-title">${title}</h2>
    <dl class="fields">
      <dt>Created</dt><dd>${formatInteger(data.created)}</dd>
      <dt>Updated</dt><dd>${formatInteger(data.updated)}</dd>
      <dt>Unchanged</dt><dd>${formatInteger(data.unchanged)}</dd>
      <dt>With errors</dt><dd>${formatInteger(data.failed)}</dd>
    </dl>
    ${errors.length
      ? html`<div class="table-wrap">
            <table>
              <caption>Errors${data.failed > errors.length ? ` (the first ${errors.length})` : ""}</caption>
              <thead>
                <tr><th scope="col" class="number">Line</th><th scope="col">Field</th><th scope="col">Message</th></tr>
              </thead>
              <tbody>
                ${errors.map(
                  (error) => html`<tr>
                    <td class="number">${formatInteger(error.line)}</td>
                    <td>${error.field ? html`<code>${error.field}</code>` : "(the line)"}</td>
                    <td>${error.message}</td>
                  </tr>`,
                )}
              </tbody>
            </table>
          </div>
          <p>
            <button type="button" class="quiet" onClick=${() => erroredRows(file, errors)}>
              Download the rows with errors
            </button>
          </p>`
      : null}
  </section>`;
}

export function ImportPage() {
  const [file, setFile] = useState(null);
  const [preview, setPreview] = useState(null);
  const [report, setReport] = useState(null);
  const [progress, setProgress] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  const choose = async (event) => {
    const chosen = event.currentTarget.files[0] || null;
    setFile(chosen);
    setReport(null);
    setError(null);
    setPreview(chosen ? await previewOf(chosen) : null);
  };

  const run = (mode) => async () => {
    if (!file || busy) return;
    setBusy(true);
    setError(null);
    setReport(null);
    setProgress(0);
    try {
      const { data } = await uploadImport(file, { mode, onProgress: setProgress });
      setReport({ mode, ok: true, data });
      announce(mode === "dry-run" ? "The dry run found no error." : "Imported.");
    } catch (failure) {
      if (failure.problem && typeof failure.problem.failed === "number") {
        setReport({ mode, ok: false, data: failure.problem });
        announce(`The dry run found ${failure.problem.failed} rows with errors.`);
      } else {
        setError(failure.detail);
      }
    } finally {
      setBusy(false);
    }
  };

  return html`<section>
    <h1 tabindex="-1">Import items</h1>
    <p>
      A CSV file (a header row naming <code>sku</code>, <code>name</code>, <code>price</code>, and
      optionally <code>description</code> and <code>quantity</code>) or NDJSON (one object a line).
      Rows are matched by SKU: new ones are created, existing ones updated.
    </p>
    <div class="field">
      <label for="import-file">File</label>
      <input id="import-file" type="file" accept=".csv,.ndjson,.jsonl,text/csv,application/x-ndjson"
        onChange=${choose} />
    </div>
    ${preview
      ? html`<div class="table-wrap">
          <table>
            <caption>The first rows of ${file.name}</caption>
            <thead><tr>${preview.columns.map((name) => html`<th scope="col">${name}</th>`)}</tr></thead>
            <tbody>
              ${preview.rows.map(
                (cells) => html`<tr>${cells.map((cell) => html`<td>${String(cell)}</td>`)}</tr>`,
              )}
            </tbody>
          </table>
        </div>`
      : null}
    <div class="actions import-actions">
      <button type="button" disabled=${!file || busy} onClick=${run("dry-run")}>Check the file (dry run)</button>
      <button type="button" disabled=${!file || busy} onClick=${run(null)}>Import</button>
      ${progress !== null
        ? html`<label class="progress">Upload <progress max="1" value=${progress}></progress></label>`
        : null}
    </div>
    <${Alert}>${error}<//>
    ${report ? html`<${Report} report=${report} file=${file} />` : null}
  </section>`;
}
