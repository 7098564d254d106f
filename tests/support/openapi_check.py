"""Every JSON answer the tests see is checked against the app's own OpenAPI document.

:func:`response_checker` gives an httpx response hook: it finds the operation (path template
and method), the documented response for the status and its media type, and validates the
body with python-jsonschema (Draft 2020-12, the dialect of OpenAPI 3.1, formats checked).
A status the document does not list for that operation fails the test too. Validators are
built once per (operation, status, media type) and kept.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jsonschema
from fastapi import FastAPI

__all__ = ["response_checker"]

_JSON_TYPES = ("application/json", "application/problem+json")
_FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
# The apps of a test session, by id: (the document's path matchers, the validators so far).
_CHECKERS: dict[int, _Checker] = {}


class _Checker:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.components = document.get("components", {})
        # Literal paths first: /items/import is not /items/{item_id}.
        templates = sorted(document["paths"], key=lambda path: (path.count("{"), path))
        self.paths: list[tuple[re.Pattern[str], str]] = [
            (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(t)) + "$"), t)
            for t in templates
        ]
        self.validators: dict[tuple[str, str, str, str], jsonschema.Draft202012Validator] = {}

    def template(self, path: str) -> str | None:
        for pattern, template in self.paths:
            if pattern.match(path):
                return template
        return None

    def validator(
        self, template: str, method: str, status: int, media_type: str
    ) -> jsonschema.Draft202012Validator:
        key = (template, method, str(status), media_type)
        if key not in self.validators:
            responses = self.document["paths"][template][method]["responses"]
            response = responses.get(str(status)) or responses.get("default")
            assert response is not None, (
                f"{method.upper()} {template} answered {status}, which the OpenAPI document "
                f"does not list (it lists {sorted(responses)})"
            )
            content = response.get("content", {})
            assert media_type in content, (
                f"{method.upper()} {template} {status} answered {media_type}; the document "
                f"says {sorted(content)}"
            )
            schema = {**content[media_type].get("schema", {}), "components": self.components}
            jsonschema.Draft202012Validator.check_schema(schema)
            self.validators[key] = jsonschema.Draft202012Validator(schema, format_checker=_FORMATS)
        return self.validators[key]


def response_checker(application: FastAPI) -> Callable[[httpx.Response], Awaitable[None]]:
    async def check(response: httpx.Response) -> None:
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        if (
            media_type not in _JSON_TYPES
            or response.status_code in (204, 304)
            or response.request.method == "HEAD"
        ):
            return  # streams, files, metrics, 204s, 304s and HEAD: no JSON to validate
        checker = _CHECKERS.get(id(application))
        if checker is None or checker.document is not application.openapi():
            checker = _CHECKERS[id(application)] = _Checker(application.openapi())
        template = checker.template(response.request.url.path)
        method = response.request.method.lower()
        if template is None or method not in checker.document["paths"][template]:
            return  # no such operation (a 404 or 405 of routing, a route added by a test)
        await response.aread()
        validator = checker.validator(template, method, response.status_code, media_type)
        errors = sorted(validator.iter_errors(response.json()), key=lambda e: list(e.path))
        assert not errors, (
            f"{method.upper()} {response.request.url.path} {response.status_code}: the body "
            f"does not match the OpenAPI document: {errors[0].message} at "
            f"{list(errors[0].absolute_path)}\n{response.text[:500]}"
        )

    return check
