"""Shared by the benchmarks: a free local port, wrk's output read into numbers, and the
run's chart (bench/charts.py) at the end."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["free_port", "run_wrk", "write_chart"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_healthy(base: str, attempts: int = 100) -> None:
    """Until the server at ``base`` answers /healthz (or ``attempts`` tries at 0.1 s)."""
    import httpx

    for _ in range(attempts):
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(command: list[str]) -> dict[str, float]:
    """Run a wrk command line (with --latency) and return rps, requests, p50/p99 (ms) and
    errors (non-2xx responses plus socket errors; also apart, as non_2xx and socket_errors,
    and socket_timeouts); wrk_5xx and sent if the script printed the lines "5xx responses: N"
    and "requests sent: N"."""
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    result["requests"] = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.MULTILINE)
        result[f"p{pct}_ms"] = _ms(match.group(1)) if match else float("nan")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    result["socket_errors"] = sum(int(n) for n in errors.groups()) if errors else 0
    result["socket_timeouts"] = int(errors.group(4)) if errors else 0
    result["errors"] = result["non_2xx"] + result["socket_errors"]
    if counted := re.search(r"^5xx responses: (\d+)$", out, re.MULTILINE):
        result["wrk_5xx"] = int(counted.group(1))
    if sent := re.search(r"^requests sent: (\d+)$", out, re.MULTILINE):
        result["sent"] = int(sent.group(1))
    return result


def write_chart(out_dir: Path, *, publish: bool) -> None:
    """The run's chart (bench/charts.py) beside its results, and with ``publish`` in
    docs/charts/ too. Any failure (matplotlib missing included) is one line: the results,
    written before, stand."""
    try:
        from charts import render_run

        render_run(out_dir, publish=publish)
    except Exception as error:
        print(f"chart not written ({type(error).__name__}: {error})", flush=True)
