"""The web console, as its users meet it: served by `stockroom serve` itself, driven in
Debian's Chromium (Playwright; never a browser of its own) on SQLite and PostgreSQL.

A user signs in with an API key; finds items by search and filters (Back keeps them);
creates one (a field error is shown at its field); edits one while another client changes
it (the 412 is explained and the new version offered); adjusts stock (a double click is one
ledger row, an oversell shows the 409's own sentence); sees changes made elsewhere without
reloading; a `read` key sees no write control; a revoked key is back at sign-in.

Things are found by role and label, as a user (and a screen reader) finds them. Any error
in the browser's console fails the test, except the browser's own network line for an API
answer the walk expects (e.g. "the server responded with a status of 409"): those are
answers the page shows, not faults.

One browser and one server per module (each test opens its own tab: a fresh sign-in, as
the key lives in the tab's sessionStorage); the tables are emptied after each test.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import uuid
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from fastapi import FastAPI
from playwright.async_api import (
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    async_playwright,
    expect,
)

from stockroom import console
from tests.support.apps import client_for, create_key
from tests.support.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.support.servers import Server, start_server
from tests.support.waiting import wait_until
from tests.webhooks.receiver import RunningReceiver

CONSOLE_FOLDER = Path(console.__file__).parent
# What a first visit may load at most, compressed (issue #22).
FIRST_VISIT_BUDGET = 120_000
# The server of the browser tests: the stream reads the log often; a webhook may point at a
# local address (a receiver that refuses, for the deliveries' page), and a failed delivery is
# tried again only when the page asks (retries an hour apart).
SERVER_ENV = {
    "STOCKROOM_EVENTS_POLL_SECONDS": "0.05",
    "STOCKROOM_WEBHOOK_ALLOW_PRIVATE": "true",
    "STOCKROOM_WEBHOOK_BACKOFF_SECONDS": "3600",
}
# axe-core as the axe-playwright-python package ships it (a test requirement): served from this
# machine, no network.
AXE_SCRIPT = (resources.files("axe_playwright_python") / "axe.min.js").read_text()
_NETWORK_LINE = re.compile(r"^Failed to load resource: the server responded with a status of (\d+)")


# --- Plain HTTP: no browser.


async def test_the_front_door_redirects_to_the_console(app: FastAPI) -> None:
    async with client_for(app) as anonymous:  # no key
        answer = await anonymous.get("/")
        assert answer.status_code == 307
        assert answer.headers["location"] == "/console/"
        assert (await anonymous.head("/")).status_code == 307


async def test_the_console_is_open_and_every_file_carries_the_security_headers(
    app: FastAPI,
) -> None:
    async with client_for(app) as anonymous:
        page = await anonymous.get("/console/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="app.js">' in page.text
        files = [
            "/console/",
            "/console/app.js",
            "/console/style.css",
            "/console/vendor/preact-htm.js",
        ]
        for path in files:
            answer = await anonymous.get(path)
            assert answer.status_code == 200, path
            for name, value in console.SECURITY_HEADERS.items():
                assert answer.headers[name] == value, (path, name)
            head = await anonymous.head(path)
            assert head.status_code == 200
            assert head.content == b""
            assert head.headers["content-security-policy"] == console.CONTENT_SECURITY_POLICY
        assert "javascript" in (await anonymous.get("/console/app.js")).headers["content-type"]
        # Compressed for a client that accepts it, and revalidated on each visit: the same
        # file again is a 304 with the same headers and no body.
        for encoding in ("gzip", "identity"):
            sent = await anonymous.get("/console/app.js", headers={"Accept-Encoding": encoding})
            assert sent.headers.get("content-encoding") == (
                encoding if encoding == "gzip" else None
            )
            assert sent.text.startswith("// The console's shell")  # httpx decompressed it
            again = await anonymous.get(
                "/console/app.js",
                headers={"Accept-Encoding": encoding, "If-None-Match": sent.headers["etag"]},
            )
            assert again.status_code == 304
            assert again.content == b""
            assert again.headers["content-security-policy"] == console.CONTENT_SECURITY_POLICY
        assert (await anonymous.get("/console")).headers["location"].endswith("/console/")
        assert (await anonymous.post("/console/app.js")).status_code == 405
        # The package's Python files beside the console's are not served; a missing file is
        # the API's usual problem+json.
        for path in ("/console/__init__.py", "/console/vendor/VENDOR.md", "/console/nothing.js"):
            answer = await anonymous.get(path)
            assert answer.status_code == 404, path
            assert answer.headers["content-type"].startswith("application/problem+json")
    # Neither the redirect nor the console is part of the API's document.
    paths = app.openapi()["paths"]
    assert "/" not in paths
    assert not [path for path in paths if path.startswith("/console")]


def test_no_inline_script_or_style_anywhere() -> None:
    """The Content-Security-Policy forbids them; this finds one before a browser does."""
    html = (CONSOLE_FOLDER / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert "<style" not in html
    assert "style=" not in html
    for source in CONSOLE_FOLDER.glob("*.js"):
        text = source.read_text()
        assert "style=" not in text, source.name
        assert "innerHTML" not in text, source.name
        assert "eval(" not in text, source.name


def test_every_module_of_the_shell_is_preloaded_and_the_chart_library_is_not() -> None:
    """index.html asks for every module app.js imports (directly or not) at once, instead of
    one level of imports at a time; uPlot, loaded only on an item's page, is not among them."""
    html = (CONSOLE_FOLDER / "index.html").read_text()
    preloaded = set(re.findall(r'<link rel="modulepreload" href="([^"]+)">', html))
    imported: set[str] = set()
    waiting = ["app.js"]
    while waiting:
        module = waiting.pop()
        text = (CONSOLE_FOLDER / module).read_text()
        for found in re.findall(
            r'^import [^;]*? from "\./([^"]+)";', text, re.MULTILINE | re.DOTALL
        ):
            if found not in imported:
                imported.add(found)
                waiting.append(found)
    assert {"chart.js", "vendor/preact-htm.js"} <= imported
    assert preloaded == imported
    assert not any("uPlot" in name for name in preloaded)


def test_everything_a_first_visit_can_load_is_small() -> None:
    """Every file the console has (the chart library included, which only an item's page
    loads), compressed as the service sends it, fits the first visit's budget."""
    total = 0
    for path in CONSOLE_FOLDER.rglob("*"):
        if path.suffix in (".html", ".js", ".css", ".svg"):
            total += len(gzip.compress(path.read_bytes()))
    assert total < FIRST_VISIT_BUDGET, total


# --- In the browser.


@pytest.fixture(scope="module")
async def server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    """One `stockroom serve` for the module's tests, on the backend's database."""
    folder = tmp_path_factory.mktemp("console-server")
    api = await asyncio.to_thread(start_server, database_url, folder, env_extra=SERVER_ENV)
    try:
        yield api
    finally:
        await asyncio.to_thread(api.stop)


@pytest.fixture(scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BrowserContext]:
    assert await asyncio.to_thread(CHROMIUM.exists), "make pytest installs Debian's chromium"
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh profile
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            await context.close()


class BrowserErrors:
    """Every console error and uncaught exception of a tab. The browser's own line for an
    API answer that the walk expects (``expect_status``) is not one."""

    def __init__(self, page: Page) -> None:
        self.seen: list[str] = []
        self.expected: set[int] = set()
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.seen.append(f"pageerror: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        network = _NETWORK_LINE.match(message.text)
        if network and int(network.group(1)) in self.expected:
            return
        self.seen.append(f"console.error: {message.text} ({message.location.get('url')})")

    def expect_status(self, *statuses: int) -> None:
        self.expected.update(statuses)


@pytest.fixture
async def tab(
    browser: BrowserContext, client: httpx.AsyncClient
) -> AsyncIterator[tuple[Page, BrowserErrors]]:
    """A new tab; no error in its console by the end of the test. (``client``: the tables
    are emptied after the test.)"""
    page = await browser.new_page()
    errors = BrowserErrors(page)
    try:
        yield page, errors
    finally:
        await page.close()
    assert errors.seen == []


@pytest.fixture
async def api_of(server: Server) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """``api_of(key)``: another client of the same server, holding that key."""
    clients: list[httpx.AsyncClient] = []

    def make(key: str) -> httpx.AsyncClient:
        http = httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        clients.append(http)
        return http

    yield make
    for http in clients:
        await http.aclose()


async def new_key(app: FastAPI, scopes: list[str]) -> tuple[str, str]:
    name = f"console-{uuid.uuid4().hex[:8]}"
    return name, await create_key(app, name, scopes)


async def sign_in(page: Page, server: Server, key: str) -> None:
    await page.goto(f"{server.url}/")  # the front door redirects to the console
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Items", level=1)).to_be_visible()
    await expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()


async def post_item(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    answer = await http.post("/items", json={"price": "10.00", **fields})
    assert answer.status_code == 201, answer.text
    item: dict[str, Any] = answer.json()
    return item


def item_rows(page: Page) -> Locator:
    return page.get_by_role("table").get_by_role("row")


def definition(page: Page, text: str) -> Locator:
    """A value of an item's fields (a ``<dd>``), by its whole text."""
    return page.get_by_role("definition").filter(has_text=re.compile(rf"^{re.escape(text)}$"))


async def test_a_large_match_count_is_shown_as_an_estimate_where_it_is_one(
    app: FastAPI,
    server: Server,
    tab: tuple[Page, BrowserErrors],
    api_of: Callable[[str], httpx.AsyncClient],
    backend: str,
) -> None:
    """More than 1,000 matches of a search: PostgreSQL estimates the number (the envelope
    says so) and the page says "About"; SQLite counts. Stock filters alone are exact."""
    page, _errors = tab
    _, admin = await new_key(app, ["admin"])
    lines = ["sku,name,price,quantity"] + [f"MANY-{n:04d},Many {n},1.00,1" for n in range(1100)]
    imported = await api_of(admin).post(
        "/items/import", content="\n".join(lines) + "\n", headers={"Content-Type": "text/csv"}
    )
    assert imported.status_code == 200, imported.text
    _, key = await new_key(app, ["read"])
    await sign_in(page, server, key)
    await expect(page.get_by_text("1,100 items match.", exact=True)).to_be_visible()
    search = page.get_by_role("searchbox", name="Search")
    await search.fill("many")
    await search.press("Enter")
    shown = "1,100 items match." if backend == "sqlite" else "About 1,100 items match."
    await expect(page.get_by_text(shown, exact=True)).to_be_visible()


async def test_sign_in_find_items_by_search_and_filter_and_back_keeps_the_filters(
    app: FastAPI,
    server: Server,
    tab: tuple[Page, BrowserErrors],
    api_of: Callable[[str], httpx.AsyncClient],
) -> None:
    page, errors = tab
    errors.expect_status(401, 422)
    _, admin = await new_key(app, ["admin"])
    http = api_of(admin)
    lines = ["sku,name,price,quantity"] + [f"BULK-{n:03d},Bulk {n},1.00,1" for n in range(52)]
    lines += ["OAK-1,Oak chair,49.90,3", "OAK-2,Oak table,120.00,0", "PINE-1,Pine shelf,30.00,2"]
    imported = await http.post(
        "/items/import", content="\n".join(lines) + "\n", headers={"Content-Type": "text/csv"}
    )
    assert imported.status_code == 200, imported.text
    assert imported.json()["created"] == 55

    name, key = await new_key(app, ["write"])
    await sign_in(page, server, key)
    assert key not in page.url
    # One page of 50 at a time, the total counted, next and previous by cursor.
    await expect(page.get_by_text("55 items match.")).to_be_visible()
    await expect(item_rows(page)).to_have_count(51)
    await page.get_by_role("button", name="Next page").click()
    await expect(item_rows(page)).to_have_count(6)
    await expect(page.get_by_role("link", name="Pine shelf")).to_be_visible()
    await page.get_by_role("button", name="Previous page").click()
    await expect(item_rows(page)).to_have_count(51)
    await expect(page.get_by_role("button", name="Previous page")).to_be_disabled()

    # "/" goes to the search; Enter searches.
    search = page.get_by_role("searchbox", name="Search")
    await page.keyboard.press("/")
    await expect(search).to_be_focused()
    await page.keyboard.type("oak")
    await page.keyboard.press("Enter")
    await expect(item_rows(page)).to_have_count(3)
    await expect(page.get_by_text("2 items match.")).to_be_visible()
    stock = page.get_by_label("Stock", exact=True)
    await stock.select_option("true")
    await expect(item_rows(page)).to_have_count(2)
    await expect(page.get_by_role("link", name="Oak chair")).to_be_visible()
    assert "q=oak" in page.url
    assert "in_stock=true" in page.url

    # To the item and Back: the filters are still there; Back again: the one before.
    await page.get_by_role("link", name="Oak chair").click()
    await expect(page.get_by_role("heading", name="Oak chair", level=1)).to_be_visible()
    await page.go_back()
    await expect(stock).to_have_value("true")
    await expect(search).to_have_value("oak")
    await expect(item_rows(page)).to_have_count(2)
    await page.go_back()
    await expect(stock).to_have_value("")
    await expect(item_rows(page)).to_have_count(3)

    # A shared link (the same address, loaded afresh) shows the same list.
    await page.goto(f"{server.url}/console/#/items?min_price=40&sort=-price")
    await page.reload()
    await expect(page.get_by_label("Sort")).to_have_value("-price")
    await expect(item_rows(page)).to_have_count(3)
    links = page.get_by_role("table").get_by_role("link")
    await expect(links).to_have_text(["Oak table", "Oak chair"])

    # A bad filter is explained at its field.
    lowest = page.get_by_label("Lowest price")
    await lowest.fill("cheap")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(lowest).to_have_attribute("aria-invalid", "true")
    await expect(lowest).not_to_have_accessible_description("")

    # The key is revoked elsewhere: the next call is refused, back to sign-in with a sentence.
    assert (await http.delete(f"/keys/{name}")).status_code == 204
    await lowest.fill("1")
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.get_by_role("alert")).to_contain_text("revoked")
    await expect(page.get_by_label("API key")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_create_with_a_field_error_then_edit_across_a_concurrent_change_and_delete(
    app: FastAPI,
    server: Server,
    tab: tuple[Page, BrowserErrors],
    api_of: Callable[[str], httpx.AsyncClient],
) -> None:
    page, errors = tab
    errors.expect_status(409, 412, 422)
    _, key = await new_key(app, ["write"])
    http = api_of(key)
    await sign_in(page, server, key)

    await page.get_by_role("button", name="New item").click()
    dialog = page.get_by_role("dialog", name="New item")
    await dialog.get_by_label("SKU").fill("DESK-1")
    await dialog.get_by_label("Name").fill("Standing desk")
    price = dialog.get_by_label("Price", exact=True)
    await price.fill("12.345")
    await dialog.get_by_role("button", name="Create item").click()
    # The same body through the API: the message the console must show at the field.
    refused = await http.post(
        "/items", json={"sku": "DESK-1", "name": "Standing desk", "price": "12.345"}
    )
    assert refused.status_code == 422
    [error] = refused.json()["errors"]
    assert error["loc"] == ["body", "price"]
    await expect(price).to_have_attribute("aria-invalid", "true")
    await expect(price).to_have_accessible_description(re.compile(re.escape(error["msg"])))
    await expect(dialog.get_by_label("SKU")).not_to_have_attribute("aria-invalid", "true")
    await price.fill("12.50")
    await dialog.get_by_label("Starting quantity").fill("4")
    await dialog.get_by_role("button", name="Create item").click()
    await expect(page.get_by_role("heading", name="Standing desk", level=1)).to_be_visible()
    item_id = int(page.url.rsplit("/", 1)[1])

    # Edit while another client changes the item: 412, explained; the new version loads.
    await page.get_by_role("button", name="Edit item").click()
    edit = page.get_by_role("dialog", name="Edit item")
    await expect(edit.get_by_label("Name")).to_have_value("Standing desk")
    changed = await http.patch(f"/items/{item_id}", json={"name": "Sit-stand desk"})
    assert changed.status_code == 200
    await edit.get_by_label("Price", exact=True).fill("15.00")
    await edit.get_by_role("button", name="Save changes").click()
    await expect(edit.get_by_role("alert")).to_contain_text("Someone else changed this item")
    assert (await http.get(f"/items/{item_id}")).json()["price"] == "12.50"  # nothing saved
    await edit.get_by_role("button", name="Load the new version").click()
    await expect(edit.get_by_label("Name")).to_have_value("Sit-stand desk")
    await edit.get_by_label("Price", exact=True).fill("15.00")
    await edit.get_by_role("button", name="Save changes").click()
    await expect(edit).to_be_hidden()
    await expect(page.get_by_role("heading", name="Sit-stand desk", level=1)).to_be_visible()
    saved = (await http.get(f"/items/{item_id}")).json()
    assert (saved["name"], saved["price"]) == ("Sit-stand desk", "15.00")

    # Delete asks first; with stock left the 409 says why; at 0 it goes.
    await page.get_by_role("button", name="Delete item").click()
    confirm = page.get_by_role("dialog", name="Delete this item?")
    await confirm.get_by_role("button", name="Delete", exact=True).click()
    await expect(confirm.get_by_role("alert")).not_to_be_empty()
    await confirm.get_by_role("button", name="Keep it").click()
    await expect(confirm).to_be_hidden()
    emptied = await http.post(
        f"/items/{item_id}/adjustments", json={"delta": -4, "reason": "count"}
    )
    assert emptied.status_code == 201
    await expect(definition(page, "0")).to_be_visible()  # the page followed the change
    await page.get_by_role("button", name="Delete item").click()
    await confirm.get_by_role("button", name="Delete", exact=True).click()
    await expect(page.get_by_role("heading", name="Items", level=1)).to_be_visible()
    assert (await http.get(f"/items/{item_id}")).status_code == 404


async def test_adjust_stock_once_per_double_click_an_oversell_explained_and_live_changes(
    app: FastAPI,
    server: Server,
    tab: tuple[Page, BrowserErrors],
    api_of: Callable[[str], httpx.AsyncClient],
) -> None:
    page, errors = tab
    errors.expect_status(409)
    _, key = await new_key(app, ["write"])
    http = api_of(key)
    item = await post_item(http, sku="LAMP-1", name="Desk lamp")
    await sign_in(page, server, key)

    # Another client adds an item: it shows in the open list, no reload.
    await post_item(http, sku="LAMP-2", name="Floor lamp")
    await expect(page.get_by_role("link", name="Floor lamp")).to_be_visible()

    await page.get_by_role("link", name="Desk lamp").click()
    await expect(page.get_by_role("heading", name="Desk lamp", level=1)).to_be_visible()
    await page.get_by_label("Change in quantity").fill("5")
    await page.get_by_label("Reason").fill("delivery")
    await page.get_by_role("button", name="Adjust stock").dblclick()
    await expect(page.get_by_role("status").filter(has_text="Done: +5")).to_be_visible()
    await expect(definition(page, "5")).to_be_visible()
    ledger = (await http.get(f"/items/{item['id']}/adjustments")).json()["data"]
    assert [(row["delta"], row["reason"]) for row in ledger] == [(5, "delivery")]
    await expect(page.get_by_role("figure")).to_contain_text("Quantity over time")

    # An oversell: the 409's own sentence.
    oversold = await http.post(f"/items/{item['id']}/adjustments", json={"delta": -50})
    assert oversold.status_code == 409
    await page.get_by_label("Change in quantity").fill("-50")
    await page.get_by_role("button", name="Adjust stock").click()
    await expect(page.get_by_role("alert")).to_have_text(oversold.json()["detail"])

    # Changes made through the API show in the open page without a reload.
    returned = await http.post(
        f"/items/{item['id']}/adjustments", json={"delta": 7, "reason": "return"}
    )
    assert returned.status_code == 201
    await expect(page.get_by_role("cell", name="return")).to_be_visible()
    await expect(definition(page, "12")).to_be_visible()
    renamed = await http.patch(f"/items/{item['id']}", json={"name": "Brass desk lamp"})
    assert renamed.status_code == 200
    await expect(page.get_by_role("heading", name="Brass desk lamp", level=1)).to_be_visible()
    await expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()
    ledger = (await http.get(f"/items/{item['id']}/adjustments")).json()["data"]
    assert [row["delta"] for row in ledger] == [7, 5]


async def test_a_read_key_sees_no_write_control(
    app: FastAPI,
    server: Server,
    tab: tuple[Page, BrowserErrors],
    api_of: Callable[[str], httpx.AsyncClient],
) -> None:
    page, _errors = tab
    _, admin = await new_key(app, ["admin"])
    await post_item(api_of(admin), sku="RO-1", name="Read only", quantity=2)
    _, reader = await new_key(app, ["read"])
    await sign_in(page, server, reader)
    await expect(page.get_by_role("link", name="Read only")).to_be_visible()
    assert await page.get_by_role("button", name="New item").count() == 0
    assert await page.get_by_role("link", name="API keys").count() == 0
    assert await page.get_by_role("link", name="Webhooks").count() == 0
    assert await page.get_by_role("link", name="Import").count() == 0
    await page.get_by_role("link", name="Read only").click()
    await expect(page.get_by_role("heading", name="Read only", level=1)).to_be_visible()
    await expect(page.get_by_role("cell", name="initial")).to_be_visible()
    for control in ("Edit item", "Delete item", "Adjust stock"):
        assert await page.get_by_role("button", name=control).count() == 0, control
    assert await page.get_by_role("textbox").count() == 0

    # Reading includes exporting: the list's filters, downloaded as a file.
    await page.go_back()
    await page.get_by_role("searchbox", name="Search").fill("RO-")
    await page.get_by_role("button", name="Apply filters").click()
    async with page.expect_download() as started:
        await page.get_by_role("button", name="Download CSV").click()
    download = await started.value
    assert download.suggested_filename.endswith(".csv")
    saved = await download.path()
    lines = (await asyncio.to_thread(saved.read_text)).splitlines()
    assert lines[0].startswith("id,sku,name")
    assert [line.split(",")[1] for line in lines[1:]] == ["RO-1"]


async def test_an_admin_creates_and_revokes_a_key_and_follows_a_webhooks_deliveries(
    app: FastAPI,
    server: Server,
    tab: tuple[Page, BrowserErrors],
    api_of: Callable[[str], httpx.AsyncClient],
) -> None:
    page, _errors = tab
    _, admin = await new_key(app, ["admin"])
    await sign_in(page, server, admin)

    await page.get_by_role("link", name="API keys").click()
    await expect(page.get_by_role("heading", name="API keys", level=1)).to_be_visible()
    robot = f"robot-{uuid.uuid4().hex[:8]}"
    await page.get_by_label("Name").fill(robot)
    await page.get_by_label("Scope").select_option("write")
    await page.get_by_role("button", name="Create key").click()
    shown = page.get_by_role("region", name=f"The key {robot}")
    secret = (await shown.get_by_text(re.compile(r"^sr_")).text_content() or "").strip()
    await expect(shown.get_by_role("button", name="Copy")).to_be_visible()
    me = await api_of(secret).get("/me")
    assert me.json() == {"name": robot, "scopes": ["read", "write"]}
    await shown.get_by_role("button", name="Done").click()
    await expect(shown).to_be_hidden()
    await page.get_by_role("button", name=f"Revoke {robot}").click()
    await (
        page.get_by_role("dialog", name="Revoke this key?")
        .get_by_role("button", name="Revoke")
        .click()
    )
    await expect(page.get_by_role("button", name=f"Revoke {robot}")).to_have_count(0)
    assert (await api_of(secret).get("/me")).status_code == 401

    # A webhook to a receiver that answers: its delivery shows up by itself, delivered.
    with RunningReceiver() as listening:
        await page.get_by_role("link", name="Webhooks").click()
        await expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()
        await page.get_by_label("URL").fill(f"{listening.url}/ok")
        await page.get_by_role("button", name="Create webhook").click()
        await page.get_by_role("link", name=f"{listening.url}/ok").click()
        await expect(page.get_by_role("heading", name="Webhook", level=1)).to_be_visible()
        await post_item(api_of(admin), sku="HOOK-0", name="Hooked first")
        delivered = page.get_by_role("row").filter(has_text="item.created")
        await expect(delivered.get_by_role("cell", name="delivered")).to_be_visible()
        await expect(delivered.get_by_role("cell", name="204")).to_be_visible()
        await wait_until(lambda: len(listening.on("/ok")) == 1)

    sections = page.get_by_role("navigation", name="Sections")
    await sections.get_by_role("link", name="Webhooks").click()
    await expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()
    receiver = "http://127.0.0.1:9/hook"  # nothing listens there: every attempt fails
    await page.get_by_label("URL").fill(receiver)
    await page.get_by_role("button", name="Create webhook").click()
    signing = page.get_by_role("region", name="The webhook's signing secret")
    await expect(signing.get_by_text(re.compile(r"^whsec_"))).to_be_visible()
    await post_item(api_of(admin), sku="HOOK-1", name="Hooked")
    await page.get_by_role("link", name=receiver).click()
    await expect(page.get_by_role("heading", name="Webhook", level=1)).to_be_visible()
    attempts = page.get_by_role("cell", name="item.created")

    async def attempted() -> bool:
        await page.get_by_role("button", name="Refresh deliveries").click()
        return await attempts.count() > 0

    await wait_until(attempted)
    await expect(page.get_by_role("cell", name=re.compile("pending|failed"))).not_to_have_count(0)
    # Retried now: a second attempt joins the list (the next automatic one is an hour away).
    await page.get_by_role("button", name="Retry item.created, attempt 1").click()
    second = page.get_by_role("button", name="Retry item.created, attempt 2")

    async def retried() -> bool:
        await page.get_by_role("button", name="Refresh deliveries").click()
        return await second.count() > 0

    await wait_until(retried)
    await page.get_by_role("button", name="Delete webhook").click()
    await (
        page.get_by_role("dialog", name="Delete this webhook?")
        .get_by_role("button", name="Delete", exact=True)
        .click()
    )
    await expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()
    await expect(page.get_by_role("link", name=receiver)).to_have_count(0)


async def test_import_a_dry_run_names_errors_by_line_and_field_then_the_file_applies(
    app: FastAPI,
    server: Server,
    tab: tuple[Page, BrowserErrors],
    api_of: Callable[[str], httpx.AsyncClient],
    tmp_path: Path,
) -> None:
    page, errors = tab
    errors.expect_status(422)
    _, key = await new_key(app, ["write"])
    http = api_of(key)
    content = (
        "sku,name,price,quantity\n"
        "IMP-1,Imported one,5.00,2\n"
        "IMP-2,Bad price,cheap,1\n"
        'IMP-3,"Bad, quantity",1.00,-5\n'
        "IMP-4,Imported four,7.50,\n"
    )
    source = tmp_path / "supplier.csv"
    source.write_text(content)
    # What the API says of this file: the console must show the same errors.
    checked = await http.post(
        "/items/import",
        params={"mode": "dry-run"},
        content=content,
        headers={"Content-Type": "text/csv"},
    )
    assert checked.status_code == 422
    expected = [(e["line"], e["field"], e["message"]) for e in checked.json()["errors"]]
    assert [(line, field) for line, field, _ in expected] == [(3, "price"), (4, "quantity")]

    await sign_in(page, server, key)
    await page.get_by_role("link", name="Import").click()
    await expect(page.get_by_role("heading", name="Import items", level=1)).to_be_visible()
    await page.get_by_label("File").set_input_files(source)
    preview = page.get_by_role("table", name="The first rows of supplier.csv")
    await expect(preview.get_by_role("cell", name="Bad, quantity")).to_be_visible()
    await expect(preview.get_by_role("row")).to_have_count(5)

    await page.get_by_role("button", name="Check the file (dry run)").click()
    await expect(page.get_by_role("heading", name=re.compile("^Dry run: 2 rows"))).to_be_visible()
    shown = page.get_by_role("table", name="Errors").get_by_role("row")
    await expect(shown).to_have_count(3)
    for index, (line, field, message) in enumerate(expected, start=1):
        await expect(shown.nth(index).get_by_role("cell")).to_have_text([str(line), field, message])
    assert (await http.get("/items", params={"count": "true"})).json()["total"] == 0

    async with page.expect_download() as started:
        await page.get_by_role("button", name="Download the rows with errors").click()
    download = await started.value
    assert download.suggested_filename == "supplier-errors.csv"
    saved = await download.path()
    assert await asyncio.to_thread(saved.read_text) == (
        'sku,name,price,quantity\nIMP-2,Bad price,cheap,1\nIMP-3,"Bad, quantity",1.00,-5\n'
    )

    await page.get_by_role("button", name="Import", exact=True).click()
    await expect(page.get_by_role("heading", name="Imported")).to_be_visible()
    listed = (await http.get("/items", params={"sort": "name"})).json()["data"]
    assert [(item["sku"], item["quantity"]) for item in listed] == [("IMP-4", 0), ("IMP-1", 2)]


# Rows with errors are kept from the chosen file read piece by piece (File.stream()): a record
# cut anywhere between two pieces (inside quotes, between \r and \n, inside a "" pair) must
# come out as the whole text reads it.
SPLIT_EVERYWHERE = r"""async () => {
  const { CsvReader, NdjsonReader } = await import("./import.js");
  const csv = '\uFEFFsku,name\r\nA-1,"Say ""hi""\nthere"\r\nA-2,plain\nA-3,"a,b"';
  const ndjson = '{"sku":"N-1"}\n{"sku":"N-2"}\n\n{"sku":"N-3"}';
  const read = (Reader, pieces) => {
    const reader = new Reader();
    const records = pieces.flatMap((piece) => reader.push(piece));
    return JSON.stringify([...records, ...reader.end()]);
  };
  const failures = [];
  for (const [Reader, text] of [[CsvReader, csv], [NdjsonReader, ndjson]]) {
    const whole = read(Reader, [text]);
    for (let cut = 0; cut <= text.length; cut++) {
      const pieces = [text.slice(0, cut), text.slice(cut)];
      if (read(Reader, pieces) !== whole) failures.push(`${Reader.name} cut at ${cut}`);
    }
    if (read(Reader, [...text]) !== whole) failures.push(`${Reader.name} by characters`);
  }
  const parsed = (Reader, text) => JSON.parse(read(Reader, [text]));
  return { failures, csv: parsed(CsvReader, csv), ndjson: parsed(NdjsonReader, ndjson) };
}"""


async def test_the_rows_with_errors_are_read_from_a_file_in_pieces_as_from_the_whole(
    server: Server, tab: tuple[Page, BrowserErrors]
) -> None:
    page, _ = tab
    await page.goto(f"{server.url}/console/")
    result = await page.evaluate(SPLIT_EVERYWHERE)
    assert result["failures"] == []
    assert [(r["line"], r["cells"]) for r in result["csv"]] == [
        (1, ["sku", "name"]),
        (2, ["A-1", 'Say "hi"\nthere']),
        (4, ["A-2", "plain"]),
        (5, ["A-3", "a,b"]),
    ]
    assert result["csv"][1]["text"] == 'A-1,"Say ""hi""\nthere"\r\n'
    assert [(r["line"], r["raw"]) for r in result["ndjson"]] == [
        (1, '{"sku":"N-1"}'),
        (2, '{"sku":"N-2"}'),
        (3, ""),
        (4, '{"sku":"N-3"}'),
    ]


async def serious_violations(page: Page) -> list[str]:
    """axe-core's serious and critical violations of what the page shows now."""
    await page.evaluate(AXE_SCRIPT)
    found: dict[str, Any] = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']]}"
        for v in found["violations"]
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("theme", ["light", "dark"])
async def test_no_serious_accessibility_violation_on_any_page(
    app: FastAPI,
    server: Server,
    tab: tuple[Page, BrowserErrors],
    api_of: Callable[[str], httpx.AsyncClient],
    theme: Literal["light", "dark"],
) -> None:
    """axe-core on every page and dialog, in the light and the dark theme."""
    page, _errors = tab
    await page.emulate_media(color_scheme=theme)
    _, admin = await new_key(app, ["admin"])
    http = api_of(admin)
    await post_item(http, sku="AXE-1", name="Checked", quantity=3, description="A thing")
    hook = await http.post("/webhooks", json={"url": "http://127.0.0.1:9/axe", "events": ["*"]})
    assert hook.status_code == 201
    found: dict[str, list[str]] = {}

    async def scan(name: str) -> None:
        found[name] = await serious_violations(page)

    await page.goto(f"{server.url}/console/")
    await expect(page.get_by_label("API key")).to_be_visible()
    await scan("sign-in")
    await sign_in(page, server, admin)
    await expect(page.get_by_role("link", name="Checked")).to_be_visible()
    await scan("items")
    await page.get_by_role("button", name="New item").click()
    await expect(page.get_by_role("dialog", name="New item")).to_be_visible()
    await scan("new item")
    await page.keyboard.press("Escape")
    await page.get_by_role("link", name="Checked").click()
    await expect(page.get_by_role("cell", name="initial")).to_be_visible()
    await expect(page.get_by_role("figure")).to_be_visible()
    await scan("item")
    await page.get_by_role("button", name="Edit item").click()
    await expect(page.get_by_role("dialog", name="Edit item")).to_be_visible()
    await scan("edit item")
    await page.keyboard.press("Escape")
    await page.get_by_role("link", name="Import").click()
    await expect(page.get_by_role("heading", name="Import items")).to_be_visible()
    await scan("import")
    await page.get_by_role("link", name="API keys").click()
    await expect(page.get_by_role("cell", name=re.compile("^console-"))).not_to_have_count(0)
    await scan("keys")
    await page.get_by_role("link", name="Webhooks").click()
    await expect(page.get_by_role("link", name="http://127.0.0.1:9/axe")).to_be_visible()
    await scan("webhooks")
    await page.get_by_role("link", name="http://127.0.0.1:9/axe").click()
    await expect(page.get_by_role("heading", name="Webhook", level=1)).to_be_visible()
    await scan("webhook")
    assert len(found) == 9, found.keys()
    assert {name: v for name, v in found.items() if v} == {}


async def test_the_overview_counts_follow_changes_and_low_stock_is_a_filter(
    app: FastAPI,
    server: Server,
    tab: tuple[Page, BrowserErrors],
    api_of: Callable[[str], httpx.AsyncClient],
) -> None:
    page, _errors = tab
    _, key = await new_key(app, ["write"])
    http = api_of(key)
    plenty = await post_item(http, sku="OV-1", name="Plenty", quantity=10, reorder_point=2)
    await post_item(http, sku="OV-2", name="Scarce", price="2.50", quantity=1, reorder_point=3)
    await post_item(http, sku="OV-3", name="Gone")
    await sign_in(page, server, key)
    await page.get_by_role("link", name="Overview").click()
    await expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    # items 3, units 11, value 102.50, out of stock 1 (Gone), low 1 (Scarce)
    await expect(definition(page, "3")).to_be_visible()
    await expect(definition(page, "11")).to_be_visible()
    await expect(definition(page, "102.50")).to_be_visible()
    await expect(definition(page, "1")).to_have_count(2)
    await expect(page.get_by_text("Service: ready")).to_be_visible()

    # Another client takes Plenty down to its reorder point: the counts and the latest
    # changes follow, with no reload.
    taken = await http.post(f"/items/{plenty['id']}/adjustments", json={"delta": -9})
    assert taken.status_code == 201
    changes = page.get_by_role("list").filter(has_text="reorder point")
    await expect(changes.get_by_role("listitem")).to_contain_text(
        ["Plenty is at or below its reorder point", "stock -9, now 1"]
    )
    await expect(definition(page, "2")).to_have_count(2)  # units 2, low 2

    await page.get_by_role("link", name="At or below reorder point").click()
    await expect(page.get_by_label("At or below reorder point")).to_be_checked()
    await expect(page.get_by_role("table").get_by_role("link")).to_have_text(["Plenty", "Scarce"])
    await page.get_by_role("link", name="Scarce").click()
    await expect(page.get_by_text("Low stock")).to_be_visible()


async def test_the_stream_is_renewed_before_its_token_expires_and_misses_nothing(
    app: FastAPI,
    database_url: str,
    tmp_path: Path,
    tab: tuple[Page, BrowserErrors],
) -> None:
    """Tokens of 4 s: the console replaces its stream with a fresh token before the service
    ends it (resuming after the last event it had), so changes keep arriving, each once."""
    page, _errors = tab
    env = {**SERVER_ENV, "STOCKROOM_EVENTS_TOKEN_SECONDS": "4"}
    short = await asyncio.to_thread(start_server, database_url, tmp_path, env_extra=env)
    tokens: list[str] = []
    page.on("request", lambda r: tokens.append(r.url) if r.url.endswith("/events/tokens") else None)
    try:
        _, key = await new_key(app, ["write"])
        await sign_in(page, short, key)
        await page.get_by_role("link", name="Overview").click()
        await expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
        async with httpx.AsyncClient(
            base_url=short.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as http:
            for n in range(8):
                await post_item(http, sku=f"LIVE-{n}", name=f"Live {n}")
                await asyncio.sleep(1)
        changes = page.get_by_role("list").filter(has_text="New item").get_by_role("listitem")
        await expect(changes).to_contain_text([f"New item Live {n}" for n in reversed(range(8))])
        assert len(tokens) >= 3, tokens  # renewed every 3 s or so
        await expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()
    finally:
        await page.goto("about:blank")  # the stream ends before its server does
        await asyncio.to_thread(short.stop)


# What sticks out of the page (for the failure's message).
_WIDER_THAN_THE_PAGE = """[...document.body.querySelectorAll("*")]
  .filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
  .map((e) => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)"""


async def test_usable_from_360_pixels_wide(
    app: FastAPI,
    server: Server,
    tab: tuple[Page, BrowserErrors],
    api_of: Callable[[str], httpx.AsyncClient],
) -> None:
    """On a phone's width nothing makes the page scroll sideways (wide tables scroll inside
    their own box), and the adjust form is still there."""
    page, _errors = tab
    await page.set_viewport_size({"width": 360, "height": 740})
    _, key = await new_key(app, ["admin"])
    await post_item(
        api_of(key), sku="NARROW-1", name="A rather long item name, to wrap", quantity=1
    )
    await sign_in(page, server, key)
    overflow = "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    await expect(page.get_by_role("link", name="A rather long item name, to wrap")).to_be_visible()
    assert await page.evaluate(overflow) <= 0, await page.evaluate(_WIDER_THAN_THE_PAGE)
    await page.get_by_role("link", name="A rather long item name, to wrap").click()
    await expect(page.get_by_role("button", name="Adjust stock")).to_be_visible()
    await expect(page.get_by_role("figure")).to_be_visible()
    assert await page.evaluate(overflow) <= 0, await page.evaluate(_WIDER_THAN_THE_PAGE)


async def tab_to(page: Page, target: Locator, *, most: int = 60) -> None:
    """Press Tab until ``target`` has the focus, as a keyboard user moves; fail if it never
    does."""
    for _ in range(most):
        if await target.evaluate("element => element === document.activeElement"):
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {target}")


async def test_the_keyboard_alone_signs_in_finds_an_item_and_adjusts_its_stock(
    app: FastAPI,
    server: Server,
    tab: tuple[Page, BrowserErrors],
    api_of: Callable[[str], httpx.AsyncClient],
) -> None:
    page, _errors = tab
    _, key = await new_key(app, ["write"])
    item = await post_item(api_of(key), sku="KEY-1", name="Keyboard tray")
    await page.goto(f"{server.url}/console/")
    await tab_to(page, page.get_by_label("API key"))
    await page.keyboard.type(key)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Items", level=1)).to_be_visible()
    await page.keyboard.press("/")
    await page.keyboard.type("tray")
    await page.keyboard.press("Enter")
    await expect(item_rows(page)).to_have_count(2)
    await tab_to(page, page.get_by_role("link", name="Keyboard tray"))
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Keyboard tray", level=1)).to_be_focused()
    await tab_to(page, page.get_by_label("Change in quantity"))
    await page.keyboard.type("3")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("status").filter(has_text="Done: +3")).to_be_visible()
    adjustments = (await api_of(key).get(f"/items/{item['id']}/adjustments")).json()["data"]
    assert [row["delta"] for row in adjustments] == [3]
    # A dialog opens and closes from the keyboard, and gives the focus back.
    await tab_to(page, page.get_by_role("button", name="Edit item"))
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("dialog", name="Edit item").get_by_label("SKU")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.get_by_role("dialog", name="Edit item")).to_be_hidden()
    await expect(page.get_by_role("button", name="Edit item")).to_be_focused()


async def test_the_chart_draws_a_history_longer_than_a_ledger_page_and_follows_changes(
    app: FastAPI,
    server: Server,
    tab: tuple[Page, BrowserErrors],
    api_of: Callable[[str], httpx.AsyncClient],
) -> None:
    page, _ = tab
    _, key = await new_key(app, ["write"])
    http = api_of(key)
    item = await post_item(http, sku="BOLT-1", name="Hex bolt")
    gate = asyncio.Semaphore(16)

    async def adjust(delta: int) -> None:
        async with gate:
            answer = await http.post(f"/items/{item['id']}/adjustments", json={"delta": delta})
            assert answer.status_code == 201, answer.text

    # 600 changes (an item made with no quantity has no row of its own): more than the
    # ledger list's largest page (500), in the chart's one request.
    await asyncio.gather(*(adjust(1 + n % 3) for n in range(600)))
    await sign_in(page, server, key)
    await page.get_by_role("link", name="Hex bolt").click()
    await expect(page.get_by_role("heading", name="Hex bolt", level=1)).to_be_visible()
    chart = page.get_by_role("figure")
    await expect(chart).to_contain_text("Quantity over time: all 600 changes.")
    # The table beside it still lists one page.
    await expect(page.get_by_role("table").get_by_role("row")).to_have_count(51)

    # A change made elsewhere adds its point.
    await adjust(4)
    await expect(chart).to_contain_text("Quantity over time: all 601 changes.")
