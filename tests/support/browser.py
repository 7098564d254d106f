"""Debian's Chromium as the browser tests launch it (through Playwright, which downloads no
browser of its own): its path, and the flags that keep it off this machine's closed network
(without them it tries Google's hosts at every start)."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
