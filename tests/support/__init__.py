"""What the tests import: helpers named for what they do. ``tests/conftest.py`` holds only
fixtures and pytest hooks.

- ``apps``: in-process apps (settings, lifespan start-up, clients, API keys);
- ``databases``: the throwaway PostgreSQL databases, emptying tables, locking rows;
- ``event_log``: reading the event log;
- ``items``: making items through the API (what the ``new_item`` fixture gives);
- ``openapi_check``: every JSON answer checked against the app's OpenAPI document;
- ``pgbouncer``: a real PgBouncer in transaction mode in front of the test PostgreSQL;
- ``problems``: asserting a problem+json answer;
- ``processes``: many short ``stockroom`` commands, a few at a time;
- ``servers``: ``stockroom serve`` as a real process on a free port;
- ``waiting``: waiting for background work, and the bound on a wait (``HANG_SECONDS``).

Their ``assert`` statements are rewritten by pytest like those of test modules (tests/__init__.py
registers them), so a failing helper reports the values it compared.
"""
