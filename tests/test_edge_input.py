"""No input is a 500: text a database cannot store, booleans as numbers, huge integers.

Every text field a client or a worker sends gets a NUL byte and (where JSON can carry one)
a lone surrogate, through a real server on SQLite and on PostgreSQL: each is a 4xx naming the
field, except a worker's error text, which is cleaned and recorded (a failure must be).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.api import create_app
from app.config import Settings
from app.db import Database
from app.migrate import upgrade
from app.models import Sweep as SweepRow
from gridsweep.client import ApiClient, clean_error
from gridsweep.text import REPLACEMENT, clean_text, text_problem
from tests.conftest import PG_URL, Server, new_pg_database, pg_available, require
from tests.robust_helpers import FAST_LEASES, log_text, logged_statuses, sweep, wait_for

NUL = "\\u0000"  # as JSON text: the bodies below are raw bytes, so a lone surrogate gets through
SUR = "\\ud800"
JSON = {"content-type": "application/json"}
W = "/api/v1/workers/some-worker"
SWEEP = '{"name": "ok", "dataset": "moons", "parameters": {"layers": 1}%s}'
LEASE = '{"trial_id": 1, "lease_token": "%s"}'


FAILED = {"trial_id": 1, "lease_token": "t", "status": "failed"}


def outcome(**fields: str) -> str:
    """A complete request's JSON text with ``fields`` (JSON text each) added to its outcome."""
    parts = [json.dumps(FAILED)[:-1]] + [f', "{k}": {v}' for k, v in fields.items()]
    return '{"outcomes": [' + "".join(parts) + "}]}"


# (id, method, path, JSON body as text with {X} where the bad text goes, the field's loc)
BODY_CASES = [
    ("sweep.name", "POST", "/api/v1/sweeps", '{"name": "{X}", "dataset": "moons"}', ["body", "name"]),
    ("sweep.dataset", "POST", "/api/v1/sweeps", '{"name": "a", "dataset": "{X}"}', ["body", "dataset"]),
    ("sweep.extra_value", "POST", "/api/v1/sweeps", SWEEP % ', "bogus": "{X}"', ["body", "bogus"]),
    ("sweep.extra_key", "POST", "/api/v1/sweeps", SWEEP % ', "{X}": 1', ["body"]),
    ("worker.name", "POST", "/api/v1/workers", '{"name": "{X}"}', ["body", "name"]),
    ("worker.hostname", "POST", "/api/v1/workers", '{"name": "w", "hostname": "{X}"}', ["body", "hostname"]),
    ("worker.device", "POST", "/api/v1/workers", '{"name": "w", "device": "{X}"}', ["body", "device"]),
    ("token.name", "POST", "/api/v1/tokens", '{"name": "{X}", "scope": "read"}', ["body", "name"]),
    (
        "heartbeat.lease_token",
        "POST",
        f"{W}/heartbeat",
        '{"leases": [%s]}' % (LEASE % "{X}"),
        ["body", "leases", 0, "lease_token"],
    ),
    (
        "epochs.lease_token",
        "POST",
        f"{W}/epochs",
        '{"reports": [{"trial_id": 1, "lease_token": "{X}", "epoch": 1}]}',
        ["body", "reports", 0, "lease_token"],
    ),
    (
        "release.lease_token",
        "POST",
        f"{W}/release",
        '{"leases": [%s]}' % (LEASE % "{X}"),
        ["body", "leases", 0, "lease_token"],
    ),
    (
        "complete.lease_token",
        "POST",
        f"{W}/complete",
        '{"outcomes": [{"trial_id": 1, "lease_token": "{X}", "status": "failed"}]}',
        ["body", "outcomes", 0, "lease_token"],
    ),
]
# A URL cannot carry a lone surrogate (it is UTF-8, decoded with replacement): NUL only.
URL_CASES = [
    ("dataset.ref", "GET", "/api/v1/datasets/a%00b", ["path", "ref"]),
    ("dataset.ref.delete", "DELETE", "/api/v1/datasets/a%00b", ["path", "ref"]),
    ("worker_id.claim", "POST", "/api/v1/workers/w%00/claim", ["path", "worker_id"]),
    ("worker_id.heartbeat", "POST", "/api/v1/workers/w%00/heartbeat", ["path", "worker_id"]),
    ("worker_id.epochs", "POST", "/api/v1/workers/w%00/epochs", ["path", "worker_id"]),
    ("worker_id.complete", "POST", "/api/v1/workers/w%00/complete", ["path", "worker_id"]),
    ("worker_id.release", "POST", "/api/v1/workers/w%00/release", ["path", "worker_id"]),
    ("worker_id.model", "POST", "/api/v1/workers/w%00/trials/1/model", ["path", "worker_id"]),
    ("trials.sort", "GET", "/api/v1/sweeps/1/trials?sort=id%00", ["query", "sort"]),
    ("trials.status", "GET", "/api/v1/sweeps/1/trials?status=failed%00", ["query", "status", 0]),
    ("model.kind", "GET", "/api/v1/sweeps/1/model?kind=best%00", ["query", "kind"]),
    ("heatmap.x", "GET", "/api/v1/sweeps/1/heatmap?x=layers%00&y=epochs", ["query", "x"]),
    ("dashboard.page", "GET", "/?page=1%00", None),
    ("dashboard.status", "GET", "/fragments/sweeps/1/trials?status=failed%00", None),
]
FORM_FIELDS = ["target", "name", "categorical"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server per backend for the module (auth off: only validation can refuse)."""
    tmp = tmp_path_factory.mktemp(f"edge-{request.param}")
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'gridsweep.db'}"
    else:
        require(pg_available(), f"PostgreSQL at {PG_URL}")
        url, drop = new_pg_database()
    upgrade(url)
    server = Server(url, tmp / "server.log")
    try:
        yield server
    finally:
        server.stop()
        if drop is not None:
            drop()


def _assert_refused(r: httpx.Response, loc: list[Any] | None, what: str) -> None:
    assert 400 <= r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    if loc is None:
        return
    body = r.json()  # the answer renders, whatever it echoes
    locs = [d["loc"] for d in body["detail"]]
    assert any(x[: len(loc)] == loc for x in locs), f"{what}: {locs}"


@pytest.mark.parametrize("bad", [NUL, SUR], ids=["nul", "surrogate"])
@pytest.mark.parametrize(
    ("case", "method", "path", "body", "loc"), BODY_CASES, ids=[c[0] for c in BODY_CASES]
)
def test_unstorable_text_in_a_body_is_a_422_naming_the_field(
    live: Server, bad: str, case: str, method: str, path: str, body: str, loc: list[Any]
) -> None:
    raw = body.replace("{X}", f"a{bad}b").encode()
    r = live.http.request(method, path, content=raw, headers=JSON)
    _assert_refused(r, loc, case)
    assert r.status_code == 422


@pytest.mark.parametrize(("case", "method", "path", "loc"), URL_CASES, ids=[c[0] for c in URL_CASES])
def test_nul_in_a_path_or_query_is_a_4xx(
    live: Server, case: str, method: str, path: str, loc: list[Any]
) -> None:
    kw: dict[str, Any] = {"json": {"max_trials": 1}} if method == "POST" else {}
    _assert_refused(live.http.request(method, path, **kw), loc, case)


@pytest.mark.parametrize("field", FORM_FIELDS)
def test_nul_in_an_upload_form_field_is_a_422(live: Server, field: str) -> None:
    data = {"target": "y", field: "a\x00b"}
    r = live.http.post("/api/v1/datasets", files={"file": ("t.csv", b"x,y\n1,0\n2,1\n")}, data=data)
    _assert_refused(r, ["body", field, 0] if field == "categorical" else ["body", field], field)


def test_invalid_utf8_in_an_upload_form_field_is_a_4xx(live: Server) -> None:
    boundary = "b0undary"
    parts = [
        (b'name="target"', b"\xed\xa0\x80"),  # a surrogate in (invalid) UTF-8
        (b'name="file"; filename="t.csv"', b"x,y\n1,0\n2,1\n"),
    ]
    raw = b"".join(
        b"--%s\r\nContent-Disposition: form-data; %s\r\n\r\n%s\r\n" % (boundary.encode(), h, v)
        for h, v in parts
    )
    raw += b"--%s--\r\n" % boundary.encode()
    r = live.http.post(
        "/api/v1/datasets", content=raw, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    _assert_refused(r, None, "target as invalid UTF-8")


def test_a_model_upload_with_a_nul_lease_token_is_a_422(live: Server) -> None:
    r = live.http.post(
        "/api/v1/workers/w/trials/1/model",
        data={"lease_token": "a\x00b", "kind": "best"},
        files={"state_dict": ("m.pt", b"x")},
    )
    _assert_refused(r, ["body", "lease_token"], "model lease_token")


def test_a_dataset_whose_header_holds_a_nul_is_stored_and_shown(live: Server) -> None:
    """File content is not text a client names: a column called 'a\\0b' is data (JSON keeps it)."""
    csv = b"a\x00b,y\n1,0\n2,1\n3,0\n4,1\n5,0\n6,1\n7,0\n8,1\n9,0\n10,1\n"
    r = live.http.post("/api/v1/datasets", files={"file": ("nul.csv", csv)}, data={"target": "y"})
    assert r.status_code == 201, r.text[:300]
    shown = live.http.get(f"/api/v1/datasets/{r.json()['id']}")
    assert shown.status_code == 200 and shown.json()["feature_names"] == ["a\x00b"]


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/api/v1/sweeps", {"name": "b", "dataset": "moons", "parameters": {"layers": True}}, "layers"),
        ("/api/v1/sweeps", {"name": "b", "dataset": "moons", "parameters": {"epochs": [1, False]}}, "epochs"),
        ("/api/v1/sweeps", {"name": "b", "dataset": "moons", "parameters": {"learning_rate": True}}, None),
        ("/api/v1/sweeps", {"name": "b", "dataset": "moons", "seeds": [True]}, "seeds"),
        ("/api/v1/sweeps", {"name": "b", "dataset": "moons", "split": {"seed": True}}, "split"),
        ("/api/v1/sweeps", {"name": "b", "dataset": "moons", "metric": {"threshold": True}}, "metric"),
        (f"{W}/claim", {"max_trials": True}, "max_trials"),
        (
            f"{W}/epochs",
            {"reports": [{"trial_id": 1, "lease_token": "t", "epoch": 1, "val_loss": False}]},
            None,
        ),
        (f"{W}/complete", {"outcomes": [{**FAILED, "metrics": {"val_accuracy": False}}]}, None),
        (f"{W}/complete", {"outcomes": [{**FAILED, "duration_seconds": True}]}, None),
        (f"{W}/complete", {"outcomes": [{**FAILED, "epochs_done": True}]}, None),
    ],
)
def test_a_boolean_is_no_number(live: Server, path: str, body: dict[str, Any], loc: str | None) -> None:
    r = live.http.post(path, json=body)
    assert r.status_code == 422, r.text[:300]
    assert "not a boolean" in r.text
    if loc:
        assert any(loc in d["loc"] for d in r.json()["detail"]), r.text[:300]


@pytest.mark.parametrize(
    ("parameters", "needle"),
    [
        ({"batch_size": 2**70}, "1000000"),
        ({"batch_size": 1_000_001}, "1000000"),
        ({"epochs": 2**70}, "1000000"),
        ({"layers": 65}, "64"),
        ({"hidden_units": 65_537}, "65536"),
        ({"hidden_units": [[8] * 65]}, "64"),
    ],
)
def test_every_integer_has_an_upper_bound(live: Server, parameters: dict[str, Any], needle: str) -> None:
    r = live.http.post("/api/v1/sweeps", json={"name": "big", "dataset": "moons", "parameters": parameters})
    assert r.status_code == 422 and needle in r.text, r.text[:300]
    big_seed = live.http.post("/api/v1/sweeps", json={"name": "s", "dataset": "moons", "seeds": [2**31]})
    assert big_seed.status_code == 422


def _running_trials(live: Server, n: int) -> tuple[ApiClient, str, list[dict[str, Any]]]:
    """``n`` trials of a new sweep, claimed by a new worker (the server is shared: older sweeps canceled)."""
    for old in live.http.get("/api/v1/sweeps", params={"limit": 500}).json()["items"]:
        live.http.post(f"/api/v1/sweeps/{old['id']}/cancel")
    client = ApiClient(live.url)
    for old in live.http.get("/api/v1/workers").json():  # gone: not counted idle (fair shares)
        client.sign_off(old["id"])
    lrs = [0.001 * (i + 1) for i in range(n)]
    created = live.http.post(
        "/api/v1/sweeps", json={"name": "w", "dataset": "moons", "parameters": {"learning_rate": lrs}}
    )
    assert created.status_code == 201, created.text
    wid = client.register("edge", "host", "cpu")["id"]
    return client, wid, client.claim(wid, n)["trials"]


@pytest.mark.parametrize("bad", [NUL, SUR], ids=["nul", "surrogate"])
def test_a_workers_report_is_cleaned_and_recorded_never_refused(live: Server, bad: str) -> None:
    """Raw HTTP, as an older or foreign worker may send it: what cannot be stored is cleaned."""
    client, wid, (failed, oom, long_) = _running_trials(live, 3)

    def ref(c: dict[str, Any]) -> dict[str, Any]:
        return {"trial_id": c["trial_id"], "lease_token": c["lease_token"]}

    report = {
        **ref(failed),
        "status": "failed",
        "error": "boom X in training",
        "device": "cpu X",
        "data_hash": "hash X",
        "split": {"validation": 0.2, "test": 0.2, "seed": 0, "note X": "X"},
        "versions": {"torch": "2 X", "torch_threads": 1},
    }
    raw = json.dumps({"outcomes": [report]}).replace(" X", f" {bad}").replace('"X"', f'"{bad}"')
    r = live.http.post(f"/api/v1/workers/{wid}/complete", content=raw.encode(), headers=JSON)
    assert r.status_code == 200 and r.json()["states"] == {str(failed["trial_id"]): "ok"}, r.text
    release = {"leases": [ref(oom)], "reason": "out_of_memory", "error": "CUDA X out of memory"}
    raw = json.dumps(release).replace(" X", f" {bad}")
    r = live.http.post(f"/api/v1/workers/{wid}/release", content=raw.encode(), headers=JSON)
    assert r.status_code == 200 and r.json()["states"] == {str(oom["trial_id"]): "ok"}, r.text
    # Too long is cut, not refused.
    long_body = {"outcomes": [{**ref(long_), "status": "failed", "error": "x" * 50_000, "device": "d" * 99}]}
    assert client.request("POST", f"/api/v1/workers/{wid}/complete", long_body)["states"]

    got = {
        c["trial_id"]: live.http.get(f"/api/v1/trials/{c['trial_id']}").json() for c in (failed, oom, long_)
    }
    t = got[failed["trial_id"]]
    assert (t["status"], t["error"], t["device"]) == (
        "failed",
        f"boom {REPLACEMENT} in training",
        f"cpu {REPLACEMENT}",
    )
    assert t["data_hash"] == f"hash {REPLACEMENT}" and t["versions"]["torch"] == f"2 {REPLACEMENT}"
    assert t["split"][f"note {REPLACEMENT}"] == REPLACEMENT
    t = got[oom["trial_id"]]
    assert t["status"] == "queued" and f"CUDA {REPLACEMENT} out of memory" in t["error"]
    t = got[long_["trial_id"]]
    assert (t["status"], len(t["error"]), len(t["device"])) == ("failed", 20_000, 64)
    client.close()


def test_the_worker_cleans_its_error_texts_before_sending() -> None:
    assert clean_error("a\x00b\ud800c") == f"a{REPLACEMENT}b{REPLACEMENT}c"
    assert clean_error(None) is None and len(clean_error("é" * 30_000) or "") == 20_000
    assert clean_text("\ud83d\ude00 ok") == "\U0001f600 ok"  # a surrogate pair is joined, not replaced
    assert text_problem("plain €") is None
    assert "NUL" in (text_problem("a\x00") or "") and "surrogate" in (text_problem("\udc80") or "")


def test_the_workers_own_client_gets_a_nul_and_surrogate_failure_recorded(live: Server) -> None:
    client, wid, (c,) = _running_trials(live, 1)
    outcome_ = {"trial_id": c["trial_id"], "lease_token": c["lease_token"], "status": "failed"}
    # httpx cannot even encode a lone surrogate: without cleaning, this call would raise.
    states = client.complete(wid, [{**outcome_, "error": "ValueError: bad\x00 \udcff bytes"}])
    assert states == {c["trial_id"]: "ok"}
    t = live.http.get(f"/api/v1/trials/{c['trial_id']}").json()
    assert (t["status"], t["error"]) == ("failed", f"ValueError: bad{REPLACEMENT} {REPLACEMENT} bytes")
    client.close()


def test_a_driver_error_behind_the_edge_is_a_422_not_a_500(db_url: str) -> None:
    """The net behind the edge types: routes that hand the driver text it cannot store."""
    app = create_app(Settings(database_url=db_url))

    def query(value: str) -> dict[str, str]:
        with app.state.db.session() as s:
            return {"got": str(s.execute(text("SELECT :v"), {"v": value}).scalar_one())}

    @app.get("/api/v1/probe")
    def probe(value: str) -> dict[str, str]:  # deliberately unchecked text
        return query(value)

    @app.get("/api/v1/probe-surrogate")
    def probe_surrogate() -> dict[str, str]:  # text no URL can carry, made in the route
        return query("a\ud800")

    with TestClient(app) as c:
        assert c.get("/api/v1/probe", params={"value": "ok"}).json() == {"got": "ok"}
        nul = c.get("/api/v1/probe", params={"value": "a\x00b"})
        # SQLite stores a NUL; PostgreSQL's driver refuses it (a DataError): then 422, never 500.
        assert nul.status_code == (200 if db_url.startswith("sqlite") else 422), nul.text
        sur = c.get("/api/v1/probe-surrogate")  # the driver cannot encode it (UnicodeEncodeError)
        assert sur.status_code == 422 and "cannot store" in sur.text, sur.text
    app.state.db.dispose()


def test_nul_in_an_idempotency_key_never_reaches_the_store(db_url: str) -> None:
    """HTTP/1.1 (h11) refuses NUL in a header on both ends; in process, the edge type refuses it."""
    app = create_app(Settings(database_url=db_url))
    with TestClient(app) as c:
        body = {"name": "i", "dataset": "moons"}
        r = c.post("/api/v1/sweeps", json=body, headers={"Idempotency-Key": "k\x00"})
        assert r.status_code == 422 and ["header", "idempotency-key"] in [
            d["loc"] for d in r.json()["detail"]
        ]
    app.state.db.dispose()


@pytest.mark.slow
def test_a_real_worker_records_a_failure_whose_message_holds_a_nul_and_goes_on(
    db_url: str,
    start_server: Callable[..., Server],
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """A stored spec this worker cannot use (as if from a newer API): its split seed is the text
    'a\\0b' (a JSON column holds that on both backends). numpy's error quotes the seed as is, so
    the trial's error message holds a NUL: the trial ends ``failed`` with it (cleaned), and the
    same worker process goes on to train the next sweep."""
    server = start_server(db_url, **FAST_LEASES)
    small = {"layers": 1, "hidden_units": 4, "epochs": 1, "batch_size": 64}
    bad = server.http.post("/api/v1/sweeps", json={"name": "bad", "dataset": "moons", "parameters": small})
    assert bad.status_code == 201, bad.text
    db = Database(db_url)
    with db.session() as s:
        row = s.get(SweepRow, bad.json()["id"])
        row.spec = {**row.spec, "split": {**row.spec["split"], "seed": "a\x00b"}}
    db.dispose()
    worker = start_worker(server.url, "--pack-size", "4")
    done = wait_for(
        lambda: (s := sweep(server.http, bad.json()["id"]))["status"] == "failed" and s, 120, "the bad sweep"
    )
    (t,) = server.http.get(f"/api/v1/sweeps/{done['id']}/trials").json()["items"]
    assert t["status"] == "failed" and f"not a{REPLACEMENT}b" in t["error"], t
    assert t["split"]["seed"] == f"a{REPLACEMENT}b"  # echoed back by the worker, cleaned
    good = server.http.post("/api/v1/sweeps", json={"name": "good", "dataset": "moons", "parameters": small})
    ok = wait_for(
        lambda: (s := sweep(server.http, good.json()["id"]))["status"] == "succeeded" and s,
        120,
        "the next sweep",
    )
    assert worker.poll() is None  # the same worker process, still running
    assert ok["counts"]["succeeded"] == 1
    assert "500" not in logged_statuses(log_text(Path(server.log.name)))
