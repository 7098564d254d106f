"""HTTP endpoints of files: ``POST /items/import`` and ``GET /items/export``."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, status
from starlette.responses import Response, StreamingResponse

from stockroom.auth.deps import READ, WRITE, ScopedRoute, accepts_export_token, principal_of
from stockroom.db import utcnow
from stockroom.edge import is_head, without_body
from stockroom.errors import UnsupportedMediaTypeError
from stockroom.files import service
from stockroom.files.formats import CSV_COLUMNS
from stockroom.files.schemas import ExportTokenCreated, ImportReport
from stockroom.http import REPLAYED_DOC
from stockroom.idempotency.deps import answer_response, idempotent
from stockroom.idempotency.service import StoredAnswer
from stockroom.items.deps import ItemFilterDep
from stockroom.items.repository import Keyset, Listing
from stockroom.items.schemas import SortKey
from stockroom.problems import problem_responses
from stockroom.resources import resources_of

__all__ = ["router"]

router = APIRouter(
    route_class=ScopedRoute,
    prefix="/items",
    tags=["files"],
    responses=problem_responses(400, 401, 403, 413, 422, 500, 503),
)


def _file(media_type: str) -> dict[str, Any]:
    """A whole file as the body: a string of that media type (``format: binary`` too, by
    which generators such as openapi-python-client offer to send raw bytes)."""
    return {"schema": {"type": "string", "format": "binary", "contentMediaType": media_type}}


# openapi-python-client sends a File body with the last of these: text/csv, the main format.
_FILE_TYPES = ("application/x-ndjson", "text/csv")
_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": f"CSV with a header row ({','.join(CSV_COLUMNS)}) or NDJSON "
        "(one object per line with the same fields). Streamed: any size up to "
        "STOCKROOM_IMPORT_MAX_BYTES.",
        "content": {media_type: _file(media_type) for media_type in _FILE_TYPES},
    }
}
_EXPORT_BODY: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The items, streamed.",
        "content": {media_type: _file(media_type) for media_type in _FILE_TYPES},
        "headers": {
            "Content-Disposition": {
                "description": 'A download: `attachment; filename="items-<time>.<format>"`.',
                "schema": {"type": "string"},
            }
        },
    }
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        pattern=r"^[\x20-\x7E]{1,255}$",
        description="The same key and the same file within 24 h answer the first report again "
        "and import nothing twice. With a key, the import is one transaction.",
    ),
]


def _report_answer(report: ImportReport) -> StoredAnswer:
    return StoredAnswer.json(status.HTTP_200_OK, report.model_dump_json().encode())


@router.post(
    "/import",
    response_model=ImportReport,
    responses={200: {"headers": REPLAYED_DOC}, **problem_responses(409, 415)},
    openapi_extra=_IMPORT_BODY,
    dependencies=[WRITE],
    operation_id="importItems",
)
async def import_items(
    request: Request,
    mode: Annotated[
        Literal["default", "atomic", "dry-run"],
        Query(
            description="atomic: one transaction; any bad row and nothing is applied (422). "
            "dry-run: checked as atomic would check it, and nothing is applied whatever the "
            "outcome: 200 with the report when it would apply cleanly, 422 with it otherwise "
            "(an `Idempotency-Key` is not used: nothing is stored)."
        ),
    ] = "default",
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Upsert items by sku from a streamed CSV or NDJSON body; answers a report."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    reader_class = service.IMPORT_FORMATS.get(media_type)
    if reader_class is None:
        raise UnsupportedMediaTypeError(
            "Send the file as text/csv or application/x-ndjson "
            f"(got {media_type or 'no Content-Type'!r})."
        )
    stores = resources_of(request).stores
    body = service.BodyHasher(request.stream())
    atomic, dry_run = mode == "atomic", mode == "dry-run"

    def run(connection: Any = None) -> Awaitable[ImportReport]:
        return service.import_items(
            stores.database,
            stores.writer,
            aiter(body),
            reader_class(),
            atomic=atomic,
            dry_run=dry_run,
            connection=connection,
        )

    # A dry run applies nothing, so it has nothing to store or replay under a key.
    if idempotency_key is None or dry_run:
        return answer_response(_report_answer(await run()), replayed=False)

    async def body_hash() -> str:
        async for _ in body:  # a replay: the body decides whether this is the same request
            pass
        return body.hexdigest()

    work = idempotent(request, idempotency_key, body_hash=body_hash)
    answer, replayed = await work.run(run, _report_answer)
    return answer_response(answer, replayed=replayed)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses=_EXPORT_BODY,
    dependencies=[READ],
    operation_id="exportItems",
)
@accepts_export_token
async def export_items(
    request: Request,
    where: ItemFilterDep,
    format: Annotated[Literal["csv", "ndjson"], Query()] = "csv",
    sort: SortKey = "id",
    token: Annotated[
        str | None,
        Query(
            description="An export token from `POST /items/export/tokens`, instead of the "
            "`Authorization` header (a plain download link)."
        ),
    ] = None,
) -> Response:
    """Every item that matches the list filters, in `sort` order, as a file download."""
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    response = StreamingResponse(
        service.export_chunks(
            resources_of(request).stores.items, Listing(where, Keyset(sort)), format
        ),
        media_type=service.EXPORT_FORMATS[format],
        headers={"Content-Disposition": f'attachment; filename="items-{stamp}.{format}"'},
    )
    # HEAD: the download's status and headers; the query is not run.
    return without_body(response) if is_head(request) else response


@router.post(
    "/export/tokens",
    status_code=status.HTTP_201_CREATED,
    dependencies=[READ],
    operation_id="createExportToken",
)
async def create_export_token(request: Request) -> ExportTokenCreated:
    """A short-lived credential for `GET /items/export?token=...`, so that a browser
    downloads an export of any size with a plain link. It opens nothing else, expires after
    `STOCKROOM_EXPORT_TOKEN_SECONDS` and stops working when its API key is revoked."""
    resources = resources_of(request)
    issued = await resources.export_tokens.issue(
        principal_of(request), anonymous=not resources.authenticator.enabled
    )
    return ExportTokenCreated(token=issued.token, expires_at=issued.expires_at)
