"""Makes docs/console.png, the README's screenshot of the console, from a real run: a fresh
SQLite database, `stockroom serve` on a free port, a few items and stock changes made through
the API, and Debian's Chromium (through Playwright) signed in on the items list. (The list,
not an item's page: a history made within a second draws a chart whose axis reads in
milliseconds.)

    .venv/bin/python scripts/console-screenshot.py
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.async_api import async_playwright, expect

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "console.png"
CHROMIUM = "/usr/bin/chromium"
ITEMS = [
    ("CHAIR-OAK-01", "Oak chair", "49.90", 12, 5),
    ("TABLE-OAK-01", "Oak dining table", "420.00", 3, 2),
    ("SHELF-PINE-02", "Pine shelf", "35.50", 0, 4),
    ("LAMP-BRASS-01", "Brass desk lamp", "89.00", 7, None),
    ("RUG-WOOL-03", "Wool rug, 2 x 3 m", "310.00", 2, 1),
    ("STOOL-ASH-01", "Ash stool", "59.00", 24, 6),
    ("DESK-WALNUT-01", "Walnut writing desk", "640.00", 1, 1),
    ("BENCH-OAK-02", "Oak hall bench", "185.00", 5, 2),
    ("MIRROR-ROUND-01", "Round wall mirror", "120.00", 9, 3),
    ("CABINET-ELM-01", "Elm cabinet", "515.00", 0, 1),
    ("SOFA-LINEN-02", "Linen sofa, three seats", "1290.00", 2, 1),
    ("VASE-CLAY-04", "Clay vase", "24.50", 38, 10),
]
# The first item's history: (change, reason).
CHANGES = [
    (20, "delivery"),
    (-4, "sale"),
    (-7, "sale"),
    (10, "delivery"),
    (-9, "sale"),
    (-1, "damaged"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start(folder: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """A migrated SQLite database, an admin key and `stockroom serve` answering: (the server,
    its address, the key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKROOM_")}
    env["STOCKROOM_DATABASE_URL"] = f"sqlite+aiosqlite:///{folder}/screenshot.db"
    stockroom = [sys.executable, "-m", "stockroom"]
    subprocess.run([*stockroom, "migrate"], env=env, cwd=folder, check=True, capture_output=True)
    key = subprocess.run(
        [*stockroom, "apikey", "create", "--name", "screenshot", "--scopes", "admin"],
        env=env, cwd=folder, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [*stockroom, "serve", "--port", str(port)],
        env=env, cwd=folder, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server, url, key
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("stockroom serve did not start")


async def shoot(url: str, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as http:
        ids = []
        for sku, name, price, quantity, reorder_point in ITEMS:
            body = {"sku": sku, "name": name, "price": price, "quantity": quantity}
            body["reorder_point"] = reorder_point
            created = await http.post("/items", json=body)
            created.raise_for_status()
            ids.append(created.json()["id"])
        for delta, reason in CHANGES:
            answer = await http.post(
                f"/items/{ids[0]}/adjustments", json={"delta": delta, "reason": reason}
            )
            answer.raise_for_status()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 860})
        await page.goto(f"{url}/")
        await page.get_by_label("API key").fill(key)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("link", name="Items", exact=True).click()
        await expect(page.get_by_role("link", name="Oak chair")).to_be_visible()
        await expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()
        await page.wait_for_timeout(300)
        await page.screenshot(path=str(OUT))
        await browser.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        server, url, key = start(folder)
        try:
            asyncio.run(shoot(url, key))
        finally:
            server.terminate()
            server.wait(timeout=30)
    sys.stdout.write(f"wrote {OUT.relative_to(ROOT)}\n")


if __name__ == "__main__":
    main()
