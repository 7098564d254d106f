"""The benchmarks' results as SVG charts (issue #25): one function per bench, each taking the
dict its script writes into results.json (async.json for bench-async) and writing chart.svg
beside it; with ``publish`` it also copies the chart to docs/charts/<bench>.svg (bench,
files, scale, async), which the README and docs/async.md show.

make bench, bench-files, bench-scale and bench-async draw their run's chart at the end
(:func:`render_run`, through wrkrun.write_chart). From the command line, the chart of a past
run (which bench it was is read from its JSON):

    .venv/bin/python bench/charts.py bench/results/<dir> [--note TEXT] [--publish]

``--note`` replaces the subtitle (by default "Run <the run's UTC stamp>"); ``--publish`` also
copies the chart to docs/charts/. Agg backend, text kept as text, a fixed hash salt and id,
no date in the file: the same results give the same bytes. Needs requirements-bench.txt
(matplotlib); nothing from the network.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.patches import Patch
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "docs" / "charts"
CHART = "chart.svg"

STYLE: Any = {  # matplotlib's rcParams (its stubs want each key as a literal)
    "svg.hashsalt": "stockroom-bench",
    "svg.id": "stockroom-bench",
    "svg.fonttype": "none",
    # Text stays text (small files); a browser without DejaVu Sans uses the next one.
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
}
# One colour per server, the same in every chart.
COLOURS = {
    "stockroom": "#1f77b4",
    "stockroom-pgbouncer": "#9ecae1",
    "bare": "#7f7f7f",
    "fastapi-ceiling": "#ff7f0e",
    "tutorial": "#2ca02c",
}
SERVER_ORDER = ["stockroom", "stockroom-pgbouncer", "bare", "fastapi-ceiling", "tutorial"]
SERVER_LABELS = {
    "stockroom": "stockroom",
    "stockroom-pgbouncer": "stockroom through PgBouncer",
    "bare": "bare Starlette + asyncpg",
    "fastapi-ceiling": "FastAPI ceiling",
    "tutorial": "SQLModel tutorial pattern",
}


def _save(fig: Figure, out_dir: Path, name: str, publish: bool) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CHART
    fig.savefig(path, format="svg", metadata={"Date": None, "Creator": None})
    if publish:
        PUBLISHED.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, PUBLISHED / f"{name}.svg")
    return path


def _title(fig: Figure, title: str, note: str) -> None:
    """The title and its subtitle above the axes, at fixed distances in inches."""
    height = fig.get_figheight()
    fig.text(0.01, 1 - 0.08 / height, title, ha="left", va="top", fontsize=12,
             fontweight="bold")  # fmt: skip
    fig.text(0.01, 1 - 0.36 / height, note, ha="left", va="top", fontsize=8.5,
             color="#444444", wrap=True)  # fmt: skip
    engine = fig.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):
        lines = math.ceil(len(note) / (fig.get_figwidth() * 14))  # about 14 characters an inch
        engine.set(rect=(0, 0, 1, 1 - (0.5 + 0.16 * lines) / height))


def _log_axis(axis: Any, low: float, high: float) -> None:
    """A log axis labelled 1, 2, 5, 10, ... over a short span, 1, 10, 100, ... over a long."""
    subs = (1.0, 2.0, 5.0) if high / max(low, 1e-9) < 1000 else (1.0,)
    axis.set_major_locator(LogLocator(subs=subs))
    axis.set_minor_formatter(NullFormatter())
    axis.set_major_formatter(lambda v, _pos: f"{v:,.5g}")


def _thousands(value: float) -> str:
    return f"{value:,.0f}"


def bench_chart(
    results: Mapping[str, Any], out_dir: Path, *, note: str, publish: bool = False
) -> Path:
    """make bench: requests per second of every server in each scenario (one panel per
    scenario, each on its own scale), with each bar's ratio to bare."""
    summary: Mapping[str, Mapping[str, Mapping[str, Any]]] = results["summary"]
    scenarios = list(summary)
    columns = min(4, len(scenarios))
    rows = math.ceil(len(scenarios) / columns)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(2.6 * columns + 0.4, 2.5 * rows + 1.1), layout="constrained")
        axes = fig.subplots(rows, columns, squeeze=False)
        present = [s for s in SERVER_ORDER if any(s in summary[sc] for sc in scenarios)]
        present += sorted({s for sc in scenarios for s in summary[sc]} - set(present))
        for index, scenario in enumerate(scenarios):
            ax: Axes = axes[index // columns][index % columns]
            servers = [s for s in present if s in summary[scenario]]
            rps = [float(summary[scenario][s]["rps"]) for s in servers]
            bars = ax.bar(
                range(len(servers)),
                rps,
                color=[COLOURS.get(s, "#bcbd22") for s in servers],
                width=0.75,
            )
            bare = summary[scenario].get("bare", {}).get("rps")
            labels = [
                f"{value:,.0f}" + (f"\n{value / bare:.2f}x" if bare and s != "bare" else "")
                for s, value in zip(servers, rps, strict=True)
            ]
            ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
            ax.set_title(scenario)
            ax.set_xticks([])
            ax.set_ylim(0, max(rps, default=1) * 1.3 or 1)
            ax.yaxis.set_major_formatter(lambda v, _pos: _thousands(v))
            ax.grid(axis="x", visible=False)
            if index % columns == 0:
                ax.set_ylabel("requests/s")
        for index in range(len(scenarios), rows * columns):
            axes[index // columns][index % columns].set_visible(False)
        handles = [
            Patch(color=COLOURS.get(s, "#bcbd22"), label=SERVER_LABELS.get(s, s)) for s in present
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(present))
        smoke = " (smoke run: the figures mean nothing)" if results.get("smoke") else ""
        _title(
            fig,
            "make bench: requests/s by scenario, Stockroom against the references" + smoke,
            f"{note}. Higher is better. Over each bar: requests/s and, below it, the ratio to "
            "bare. Each server one uvicorn process on one core; -cN: wrk's connections.",
        )
        return _save(fig, out_dir, "bench", publish)


def files_chart(
    results: Mapping[str, Any], out_dir: Path, *, note: str, publish: bool = False
) -> Path:
    """make bench-files: the import's and the export's rows/s against psql's COPY, with the
    targets (import >= 0.60x COPY into the same tables, export >= 0.5x COPY TO)."""
    rows = int(results["rows"])
    panels = [
        (
            "import",
            [
                ("stockroom import", results.get("stockroom_import_s"), COLOURS["stockroom"]),
                ("COPY into the same tables", results.get("same_tables_copy_s"), "#7f7f7f"),
            ],
            ("COPY into the same tables", 0.60),
        ),
        (
            "export",
            [
                ("stockroom export", results.get("stockroom_export_s"), COLOURS["stockroom"]),
                ("COPY TO", results.get("copy_to_s"), "#7f7f7f"),
            ],
            ("COPY TO", 0.5),
        ),
    ]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(9.5, 3.6), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, (what, bars, (reference, ratio)) in zip(axes, panels, strict=True):
            shown = [(label, rows / float(s), colour) for label, s, colour in bars if s]
            y = list(range(len(shown)))[::-1]
            drawn = ax.barh(y, [r for _, r, _ in shown], color=[c for *_, c in shown], height=0.6)
            first = shown[0][1] if shown else 0.0
            ax.bar_label(
                drawn,
                labels=[
                    f"{r:,.0f}" + ("" if i == 0 else f"  (stockroom: {first / r:.2f}x)")
                    for i, (_, r, _) in enumerate(shown)
                ],
                fontsize=7.5,
                padding=3,
            )
            ax.set_yticks(y, [label for label, *_ in shown])
            ax.set_xlim(0, max((r for _, r, _ in shown), default=1) * 1.6)
            ax.set_ylim(-0.5, len(shown) - 0.5 + 0.6)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.xaxis.set_major_formatter(lambda v, _pos: _thousands(v))
            ax.set_xlabel("rows/s (higher is better)")
            ax.set_title(f"{what}, {rows:,} rows")
            ax.grid(axis="y", visible=False)
            ref = {label: r for label, r, _ in shown}.get(reference)
            if ref:
                ax.axvline(
                    ref * ratio,
                    color="#d62728",
                    linestyle="--",
                    linewidth=1,
                    label=f"target: stockroom >= {ratio:.2f}x {reference}",
                )
                ax.legend(loc="upper right", fontsize=7.5)
        rss = results.get("stockroom_peak_rss_mb")
        plain = results.get("copy_from_s")
        _title(
            fig,
            "make bench-files: import and export rows/s against psql's COPY",
            f"{note}."
            + (f" Server's peak RSS {float(rss):.0f} MB (target <= 200 MB)." if rss else "")
            + (
                f" COPY into a plain table (the old reference, not drawn): "
                f"{rows / float(plain):,.0f} rows/s."
                if plain
                else ""
            ),
        )
        return _save(fig, out_dir, "files", publish)


def scale_chart(
    results: Mapping[str, Any], out_dir: Path, *, note: str, publish: bool = False
) -> Path:
    """make bench-scale: each request's sequential p50 (dot) and p99 (end of the bar) at each
    data size, on a log scale."""
    sizes: Mapping[str, Mapping[str, Any]] = results["sizes"]
    size_keys = sorted(sizes, key=int)
    names = list(sizes[size_keys[0]]["requests"])
    palette = ["#9ecae1", "#1f77b4", "#08306b", "#ff7f0e"]
    step = 0.8 / max(len(size_keys), 1)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(9, 0.32 * len(names) * max(1, len(size_keys) / 2) + 1.6),
                     layout="constrained")  # fmt: skip
        ax = fig.subplots()
        for k, size in enumerate(size_keys):
            colour = palette[k % len(palette)]
            offset = (k - (len(size_keys) - 1) / 2) * step
            requests = sizes[size]["requests"]
            ys, p50s, p99s = [], [], []
            for i, name in enumerate(names):
                if name in requests:
                    ys.append(len(names) - 1 - i - offset)
                    p50s.append(max(float(requests[name]["p50"]), 0.01))
                    p99s.append(max(float(requests[name]["p99"]), 0.01))
            ax.hlines(ys, p50s, p99s, color=colour, linewidth=2.2)
            ax.plot(p50s, ys, "o", color=colour, markersize=4, label=f"{int(size):,} items")
            ax.plot(p99s, ys, "|", color=colour, markersize=7, markeredgewidth=1.6)
        ax.set_xscale("log")
        low, high = ax.get_xlim()
        ax.set_xlim(low, high)
        _log_axis(ax.xaxis, low, high)
        ax.set_yticks(range(len(names)), names[::-1])
        ax.set_ylim(-0.7, len(names) - 0.3)
        ax.grid(axis="y", visible=False)
        ax.grid(axis="x", which="minor", color="#f0f0f0", linewidth=0.4)
        ax.set_xlabel("ms per request, log scale (lower is better): dot = p50, bar's end = p99")
        ax.legend(loc="upper right", title="data size")
        _title(
            fig,
            "make bench-scale: latency of each read by data size",
            f"{note}. Sequential requests through one stockroom serve, httpx on 127.0.0.1.",
        )
        return _save(fig, out_dir, "scale", publish)


ASYNC_LABELS = {
    "/io/async": "async def + await asyncio.sleep",
    "/io/def": "def + time.sleep (thread pool)",
    "/io/blocking": "async def + time.sleep (blocks the loop)",
    "/db/async": "async def, AsyncSession (asyncpg)",
    "/db/def": "def, Session (psycopg)",
}


def async_chart(
    results: Mapping[str, Any],
    out_dir: Path,
    *,
    note: str,
    connections: int | None = None,
    publish: bool = False,
) -> Path:
    """make bench-async: requests/s of each way of doing 50 ms of I/O at the run's
    concurrency, against the ideal (connections / 50 ms), and their p50 / p99."""
    endpoints = list(results)
    rps = [float(results[e]["rps"]) for e in endpoints]
    labels = [f"{e}\n{ASYNC_LABELS.get(e, '')}".strip() for e in endpoints]
    colours = ["#d62728" if "blocking" in e else "#1f77b4" if "async" in e else "#ff7f0e"
               for e in endpoints]  # fmt: skip
    y = list(range(len(endpoints)))[::-1]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(10, 0.62 * len(endpoints) + 1.9), layout="constrained")
        left, right = fig.subplots(1, 2, sharey=True, width_ratios=(1.3, 1))
        bars = left.barh(y, rps, color=colours, height=0.65)
        texts = []
        for e, value in zip(endpoints, rps, strict=True):
            text = f"{value:,.0f}/s"
            if "answered" in results[e]:
                text += f" ({int(results[e]['answered']):,} answered"
                errors = results[e].get("errors")
                text += f", {float(errors):,.0f} errors)" if errors else ")"
            texts.append(text)
        left.bar_label(bars, labels=texts, fontsize=7.5, padding=3)
        top = max(rps, default=1)
        if connections:
            ideal = connections / 0.05
            top = max(top, ideal)
            left.axvline(ideal, color="#2ca02c", linestyle="--", linewidth=1,
                         label=f"ideal at c={connections}: {ideal:,.0f}/s")  # fmt: skip
            left.legend(loc="lower right", fontsize=7.5)
        left.set_xlim(0, top * 1.45)
        left.set_yticks(y, labels, fontsize=8)
        left.xaxis.set_major_formatter(lambda v, _pos: _thousands(v))
        left.set_xlabel("requests/s (higher is better)")
        left.set_title("throughput" + (f" at c={connections}" if connections else ""))
        left.grid(axis="y", visible=False)
        p50 = [max(float(results[e]["p50_ms"]), 0.1) for e in endpoints]
        p99 = [max(float(results[e]["p99_ms"]), 0.1) for e in endpoints]
        right.hlines(y, p50, p99, color="#08519c", linewidth=2.2)
        right.plot(p50, y, "o", color="#08519c", markersize=5, label="p50")
        right.plot(p99, y, "|", color="#08519c", markersize=9, markeredgewidth=2, label="p99")
        for row, low, high in zip(y, p50, p99, strict=True):
            right.annotate(f"{low:,.0f} / {high:,.0f} ms", (high, row), xytext=(6, 0),
                           textcoords="offset points", va="center", fontsize=7.5)  # fmt: skip
        right.set_xlim(min(p50, default=1) / 2, max(p99, default=1) * 6)
        right.set_xscale("log")
        _log_axis(right.xaxis, min(p50, default=1) / 2, max(p99, default=1) * 6)
        right.tick_params(axis="x", labelsize=7.5)
        right.set_xlabel("ms, log scale (lower is better)")
        right.set_title("latency: dot p50, bar's end p99")
        right.grid(axis="y", visible=False)
        _title(
            fig,
            "make bench-async: 50 ms of I/O per request, async against def and blocking",
            f"{note}. One uvicorn worker on one core; wrk"
            + (f" -c{connections}" if connections else "")
            + "; /db/*: SELECT pg_sleep(0.05) on PostgreSQL.",
        )
        return _save(fig, out_dir, "async", publish)


def code_commit() -> str:
    """The checkout's short commit, with '+ changes' if its tracked files differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "-uno")
    except OSError:
        return "unknown"
    if not commit:
        return "unknown"
    return commit + (" + changes" if dirty else "")


def run_note(stamp: str) -> str:
    """The subtitle of a chart made at the end of its run: when, and from which code."""
    return f"Run {stamp}, code {code_commit()}"


CHARTS: dict[str, Callable[..., Path]] = {
    "bench": bench_chart,
    "files": files_chart,
    "scale": scale_chart,
    "async": async_chart,
}


def load(run_dir: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Which bench a results directory holds, its results and the chart's other arguments."""
    if (run_dir / "async.json").exists():
        results = json.loads((run_dir / "async.json").read_text())
        md = run_dir / "async.md"
        found = re.search(r"-c(\d+)", md.read_text()) if md.exists() else None
        return "async", results, {"connections": int(found.group(1)) if found else None}
    results = json.loads((run_dir / "results.json").read_text())
    if "summary" in results:
        return "bench", results, {}
    if "sizes" in results:
        return "scale", results, {}
    if "stockroom_import_s" in results:
        return "files", results, {}
    raise SystemExit(f"{run_dir}: not the results of make bench, bench-files, bench-scale "
                     "or bench-async")  # fmt: skip


def render_run(run_dir: Path, *, note: str | None = None, publish: bool = False) -> Path:
    """The chart of the run in ``run_dir`` (its JSON says which bench), written beside its
    results (and to docs/charts/ with ``publish``). The subtitle: ``note``, by default the
    run's stamp and the checkout's commit (right at the end of a run, not for a past one)."""
    kind, results, extra = load(run_dir)
    stamp = str(results.get("stamp") or run_dir.name.split("-", 1)[0])
    chart = CHARTS[kind](results, run_dir, note=note or run_note(stamp), publish=publish, **extra)
    print(f"chart: {chart}" + (f" and {PUBLISHED / (kind + '.svg')}" if publish else ""))
    return chart


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Re-render the chart of a past bench run.")
    parser.add_argument("run_dir", type=Path, help="bench/results/<dir> of a past run")
    parser.add_argument("--note", help="the subtitle (default: 'Run <the run's stamp>')")
    parser.add_argument("--publish", action="store_true", help="also copy it to docs/charts/")
    args = parser.parse_args(argv)
    stamp = args.run_dir.resolve().name.split("-", 1)[0]
    render_run(args.run_dir, note=args.note or f"Run {stamp}", publish=args.publish)


if __name__ == "__main__":
    main()
