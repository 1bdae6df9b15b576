"""Schemathesis against the OpenAPI schema, in process (ASGI), with an admin token.

Every operation gets positive and negative (schema-violating) examples. Checks: no 5xx,
responses (and their status codes and content types) conform to the schema, and data
that violates the schema is rejected. Examples are bounded so the run stays short.
The same run on PostgreSQL (fewer examples, about a minute): it is the stricter store
(a NUL byte in text, a 32-bit integer column), where a generated input used to be a 500.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import text

from app.api import create_app
from app.config import Settings
from app.migrate import upgrade
from tests.conftest import PG_URL, new_pg_database, pg_available, require
from tests.robust_helpers import bearer, make_tokens

MAX_EXAMPLES = 50
MAX_EXAMPLES_PG = 20
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    negative_data_rejection,
]
# The app is built at import (schemathesis parametrizes from its schema then); its store is
# created, migrated and given a token by the module fixture below, before any request.
DB_DIR = Path(tempfile.mkdtemp(prefix="gridsweep-fuzz-"))
DB_URL = f"sqlite:///{DB_DIR / 'fuzz.db'}"
# Small grids: a generated spec may be valid, and then it is really stored.
APP = create_app(Settings(database_url=DB_URL, auth="on", max_trials=64))
TOKEN: dict[str, str] = {}
SEEN: Counter[str] = Counter()  # status codes answered, for the summary line

schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP
# The PostgreSQL app is built by its fixture (its database is made then); each call names it.
schema_pg = schemathesis.openapi.from_dict(APP.openapi())
PG: dict[str, FastAPI] = {}
SEEN_PG: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def store() -> Iterator[None]:
    DB_DIR.mkdir(exist_ok=True)  # set up again after a teardown when the module's tests come in parts
    upgrade(DB_URL)
    TOKEN.update(make_tokens(DB_URL, fuzz_admin="admin"))
    _move_token_away(APP)
    yield
    print(f"\nschemathesis: {sum(SEEN.values())} calls, statuses {dict(sorted(SEEN.items()))}")
    APP.state.db.dispose()
    shutil.rmtree(DB_DIR, ignore_errors=True)


def _move_token_away(app: FastAPI) -> None:
    # The fuzzer revokes tokens by small ids (0, 1, ...): move ours out of its way.
    with app.state.db.session() as session:
        session.execute(text("UPDATE api_token SET id = 987654 WHERE name = 'fuzz_admin'"))


@pytest.fixture(scope="module")
def pg_store() -> Iterator[FastAPI]:
    require(pg_available(), f"PostgreSQL at {PG_URL}")
    url, drop = new_pg_database()
    try:
        upgrade(url)
        app = create_app(Settings(database_url=url, auth="on", max_trials=64))
        TOKEN.update(pg_admin=make_tokens(url, fuzz_admin="admin")["fuzz_admin"])
        _move_token_away(app)
        PG["app"] = app
        yield app
        seen = dict(sorted(SEEN_PG.items()))
        print(f"\nschemathesis on PostgreSQL: {sum(SEEN_PG.values())} calls, statuses {seen}")
        app.state.db.dispose()
    finally:
        drop()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    response = case.call(headers=bearer(TOKEN["fuzz_admin"]))
    SEEN[str(response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)


@schema_pg.parametrize()
@settings(
    max_examples=MAX_EXAMPLES_PG, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
def test_api_conforms_to_its_schema_on_postgresql(case: schemathesis.Case, pg_store: FastAPI) -> None:
    response = case.call(app=pg_store, headers=bearer(TOKEN["pg_admin"]))
    SEEN_PG[str(response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)
