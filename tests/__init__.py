"""Stockroom's tests: tests/conftest.py says which run where, tests/support/ holds the helpers
they import."""

import pytest

# The helpers' asserts report the values they compared, as a test module's do (pytest
# rewrites only test modules and conftest.py unless told; before they are imported).
pytest.register_assert_rewrite("tests.support", "tests.webhooks.dispatching")
