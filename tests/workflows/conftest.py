"""Fixtures of the workflows tests."""

from __future__ import annotations

import pytest

from tests.e2e.harness import Endpoint


@pytest.fixture
def server():
    """A real HTTP server on 127.0.0.1 that answers from a script and records the calls (the e2e harness's)."""
    endpoint = Endpoint()
    yield endpoint
    endpoint.close()
