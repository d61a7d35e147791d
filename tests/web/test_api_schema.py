"""schemathesis against the OpenAPI document: generated requests, valid and not, never a 500.

The application runs in-process (ASGI) over a real SQLite store and a real broker; every
operation is called authenticated, so generation reaches past the login.
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tunnelbroker.broker.persistence import Persister
from tunnelbroker.broker.service import Broker
from tunnelbroker.broker.users import UserService
from tunnelbroker.config import load_config
from tunnelbroker.store import Store
from tunnelbroker.web.app import WebContext, create_app
from tunnelbroker.web.auth import new_token
from tunnelbroker.web.server import WebServer

# Building the app makes a session key in data_dir: keep that out of the host's /var/lib.
_DOC_DIR = tempfile.mkdtemp(prefix="tb-openapi-")
atexit.register(shutil.rmtree, _DOC_DIR, True)
_DOC_CONFIG = load_config(None, {"data_dir": _DOC_DIR})


class _NoContext:
    """Enough of a context to build the application for its OpenAPI document."""

    config = _DOC_CONFIG
    figures = None


# The document does not depend on state, so the operations are known at collection time.
schema = schemathesis.openapi.from_dict(create_app(_NoContext()).openapi())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A real broker and web server on loopback, on a thread of their own."""
    tmp: Path = tmp_path_factory.mktemp("api")
    config = load_config(
        None,
        {
            "data_dir": str(tmp),
            "limits": {"tunnels_per_user": 50},
            "web": {"listen": ["127.0.0.1"], "port": 0, "login_failure_burst": 100000},
        },
    )
    store = Store(config.database_url)
    store.migrate()
    persister = Persister(store)
    persister.start()
    broker = Broker(config, persister)
    users = UserService(store, config.broker.realm)
    user = users.add("alice", "correct horse battery")
    token, hashed = new_token()
    store.add_token(user.id, hashed, "schemathesis", time.time())
    loop = asyncio.new_event_loop()
    web = WebServer(WebContext(config, broker, users, store))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(web.start(), loop).result(30)
        yield f"http://127.0.0.1:{web.port}", {"Authorization": f"Bearer {token}"}
    finally:
        asyncio.run_coroutine_threadsafe(web.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        persister.stop()
        store.close()


@schema.parametrize()
@hypothesis.settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_input_makes_a_server_error(case: Any, served: tuple[str, dict[str, str]]) -> None:
    base_url, auth = served
    response = case.call(base_url=base_url, headers=auth, timeout=10)
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code < 300 and response.status_code != 204:
        case.validate_response(response, checks=[response_schema_conformance])
    if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
        assert response.json()["error"], response.text
