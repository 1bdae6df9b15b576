"""Schemathesis against the OpenAPI schema, in process (ASGI), with an admin token.

Every operation gets positive and negative (schema-violating) examples. Checks: no 5xx,
responses (and their status codes and content types) conform to the schema, and data
that violates the schema is rejected. Examples are bounded so the run stays short.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
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
from tests.robust_helpers import bearer, make_tokens

MAX_EXAMPLES = 50
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


@pytest.fixture(scope="module", autouse=True)
def store() -> Iterator[None]:
    upgrade(DB_URL)
    TOKEN.update(make_tokens(DB_URL, fuzz_admin="admin"))
    # The fuzzer revokes tokens by small ids (0, 1, ...): move ours out of its way.
    with APP.state.db.session() as session:
        session.execute(text("UPDATE api_token SET id = 987654 WHERE name = 'fuzz_admin'"))
    yield
    print(f"\nschemathesis: {sum(SEEN.values())} calls, statuses {dict(sorted(SEEN.items()))}")
    APP.state.db.dispose()
    shutil.rmtree(DB_DIR, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    response = case.call(headers=bearer(TOKEN["fuzz_admin"]))
    SEEN[str(response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)
