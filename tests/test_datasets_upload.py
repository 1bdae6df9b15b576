"""Uploading datasets through the API, on SQLite and PostgreSQL: every rejection names the column
and row and stores nothing; CSV and Parquet, both tasks, one-hot categoricals, dedup by hash."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.config import Settings
from gridsweep.payload import fingerprint, unpack


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=db_url, max_upload_bytes=20_000))) as c:
        yield c


def frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    return pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "color": rng.choice(["red", "green", "blue"], size=n),
            "label": np.where(x1 + x2 > 0, "yes", "no"),
            "value": 3.0 * x1 - x2 + 10.0,
        }
    )


def csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def upload(c: TestClient, raw: bytes, filename: str = "data.csv", **form: Any) -> Any:
    data = {k: v for k, v in form.items() if v is not None}
    return c.post("/api/v1/datasets", files={"file": (filename, raw, "text/csv")}, data=data)


def errors(r: Any) -> list[tuple[list[Any], str]]:
    assert r.status_code == 422, r.text
    return [(e["loc"], e["msg"]) for e in r.json()["detail"]]


def test_each_rejection_names_column_and_row_and_stores_nothing(client: TestClient) -> None:
    df = frame().drop(columns=["value"])
    # Missing target column.
    [(loc, msg)] = errors(upload(client, csv_bytes(df), target="nope"))
    assert loc == ["body", "target"] and "'nope'" in msg and "x1" in msg
    # A text feature column not declared categorical: named with its first bad row.
    [(loc, msg)] = errors(upload(client, csv_bytes(df), target="label"))
    assert loc == ["body", "file", "color"] and "not numeric" in msg and "row 1" in msg
    assert "--categorical color" in msg
    # NaN in a feature (row 4) and inf in another (row 7): one error per column.
    bad = df.copy()
    bad.loc[3, "x1"] = np.nan
    bad.loc[6, "x2"] = np.inf
    errs = errors(upload(client, csv_bytes(bad), target="label", categorical=["color"]))
    assert any(loc == ["body", "file", "x1"] and "1 missing value(s) in row 4" in m for loc, m in errs)
    assert any(loc == ["body", "file", "x2"] and "1 infinite value(s) in row 7" in m for loc, m in errs)
    assert all("drop" in m for _, m in errs)
    # A missing target value.
    bad = df.copy()
    bad.loc[9, "label"] = None
    [(loc, msg)] = errors(upload(client, csv_bytes(bad), target="label", categorical=["color"]))
    assert loc == ["body", "target"] and "'label'" in msg and "row 10" in msg
    # A regression target that is text, with the row.
    [(loc, msg)] = errors(
        upload(client, csv_bytes(df), target="label", task="regression", categorical=["color"])
    )
    assert loc == ["body", "target"] and "not numeric" in msg and "row 1" in msg
    # Too few rows for the split.
    [(loc, msg)] = errors(upload(client, csv_bytes(df.head(2)), target="label", categorical=["color"]))
    assert loc == ["body", "file"] and "2 rows" in msg
    # ... also when --drop-missing leaves too few.
    bad = df.head(4).copy()
    bad.loc[[0, 1], "x1"] = np.nan
    [(loc, msg)] = errors(
        upload(client, csv_bytes(bad), target="label", categorical=["color"], drop_missing="true")
    )
    assert "2 rows after dropping 2" in msg
    # A classification target with one class.
    one = df.assign(label="yes")
    [(loc, msg)] = errors(upload(client, csv_bytes(one), target="label", categorical=["color"]))
    assert loc == ["body", "target"] and "single class ('yes')" in msg
    # A categorical column that is not there, or is the target.
    errs = errors(upload(client, csv_bytes(df), target="label", categorical=["shade", "label"]))
    assert (["body", "categorical", 0], "categorical column 'shade' is not in the file") in errs
    assert any(loc == ["body", "categorical", 1] for loc, _ in errs)
    # Not a table at all, and an empty file.
    [(loc, _)] = errors(upload(client, b"", target="label"))
    assert loc == ["body", "file"]
    [(loc, msg)] = errors(upload(client, b"PAR1 not really parquet", "x.parquet", target="label"))
    assert loc == ["body", "file"] and "PARQUET" in msg
    # Over the size limit: 413.
    big = frame(n=2000)
    r = upload(client, csv_bytes(big), target="label", categorical=["color"])
    assert r.status_code == 413 and "upload limit" in r.json()["detail"]
    # A name that would be ambiguous.
    for name in ("123", "moons", "has space"):
        [(loc, _)] = errors(upload(client, csv_bytes(df), target="label", categorical=["color"], name=name))
        assert loc == ["body", "name"]
    # Nothing of any of that was stored.
    assert client.get("/api/v1/datasets").json()["total"] == 0


def test_csv_classification_with_one_hot_and_dedup_by_hash(client: TestClient) -> None:
    df = frame().drop(columns=["value"])
    raw = csv_bytes(df)
    r = upload(client, raw, "my data.csv", target="label", categorical=["color"])
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["name"] == "my-data" and ds["created"] is True and ds["format"] == "csv"
    assert (
        ds["task"] == "classification"
        and ds["task_source"] == "inferred"
        and "not numeric" in ds["task_reason"]
    )
    assert ds["classes"] == ["no", "yes"] and ds["n_rows"] == 40 and ds["n_features"] == 2 + 3
    detail = client.get(f"/api/v1/datasets/{ds['id']}").json()
    assert detail["feature_names"] == ["x1", "x2", "color=blue", "color=green", "color=red"]
    cols = {c["name"]: c for c in detail["columns"]}
    assert cols["color"]["role"] == "categorical" and cols["color"]["categories"] == ["blue", "green", "red"]
    assert cols["x1"]["mean"] == pytest.approx(df["x1"].mean())
    assert cols["label"]["class_counts"] == df["label"].value_counts().to_dict()
    assert client.get("/api/v1/datasets/my-data").json()["id"] == ds["id"]  # by name too

    # The same bytes again (another file name): the same dataset, 200, nothing new stored.
    again = upload(client, raw, "copy.csv", target="label", categorical=["color"])
    assert again.status_code == 200 and again.json()["id"] == ds["id"] and again.json()["created"] is False
    same = upload(client, raw, target="label", categorical=["color"], task="classification")
    assert same.status_code == 200 and same.json()["id"] == ds["id"]
    # ... but not read differently.
    r = upload(client, raw, target="x1", categorical=["color"])
    assert r.status_code == 409 and f"dataset {ds['id']}" in r.json()["detail"]
    # Other bytes under a taken name: 409.
    r = upload(
        client,
        csv_bytes(frame(seed=1).drop(columns=["value"])),
        "my-data.csv",
        target="label",
        categorical=["color"],
    )
    assert r.status_code == 409 and "taken" in r.json()["detail"]
    assert client.get("/api/v1/datasets").json()["total"] == 1

    # What workers get: the encoded arrays, with the advertised fingerprint.
    data = client.get(f"/api/v1/datasets/{ds['id']}/data")
    loaded, meta = unpack(data.content)
    assert fingerprint(loaded) == ds["data_hash"] == data.headers["x-gridsweep-data-hash"]
    assert meta["encoding"]["categorical"] == {"color": ["blue", "green", "red"]}
    np.testing.assert_array_equal(loaded.X[:, 0], df["x1"].to_numpy())
    np.testing.assert_array_equal(loaded.X[:, 2:].sum(axis=1), np.ones(40))  # exactly one category per row
    assert [loaded.classes[i] for i in loaded.y] == df["label"].tolist()


def test_parquet_regression_inference_and_drop_missing(client: TestClient) -> None:
    df = frame().drop(columns=["label", "color"])
    df.loc[5, "x2"] = np.nan
    buf = io.BytesIO()
    df.to_parquet(buf)
    r = upload(client, buf.getvalue(), "reg.parquet", target="value", drop_missing="true")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["format"] == "parquet" and ds["task"] == "regression" and ds["task_source"] == "inferred"
    assert "non-integer" in ds["task_reason"] and ds["classes"] == [] and ds["n_rows"] == 39
    assert client.get(f"/api/v1/datasets/{ds['id']}").json()["n_dropped"] == 1

    # A numeric target with few integer values is inferred to be class labels; a given task wins.
    ints = frame().drop(columns=["label", "color"]).assign(value=lambda d: (d.x1 > 0).astype(int) + 1)
    r = upload(client, csv_bytes(ints), "ints.csv", target="value")
    assert r.json()["task"] == "classification" and r.json()["classes"] == [1, 2]
    assert "2 distinct integer values" in r.json()["task_reason"]
    r = upload(client, csv_bytes(ints.assign(x1=ints.x1 + 1)), "ints2.csv", target="value", task="regression")
    assert r.json()["task"] == "regression" and r.json()["task_source"] == "given"


def test_sweep_names_dataset_by_id_or_name_and_delete_waits_for_it(client: TestClient) -> None:
    ds = upload(
        client, csv_bytes(frame().drop(columns=["value"])), target="label", categorical=["color"]
    ).json()
    spec = {
        "name": "s",
        "parameters": {"epochs": 1, "hidden_units": 4},
        "split": {"validation": 0.25, "test": 0.25},
    }
    by_id = client.post("/api/v1/sweeps", json={**spec, "dataset": ds["id"]})
    assert by_id.status_code == 201, by_id.text
    sweep = client.get(f"/api/v1/sweeps/{by_id.json()['id']}").json()
    assert sweep["dataset"] == ds["name"]
    # A metric that does not fit, a split that leaves too few rows, an unknown dataset: 422 at the field.
    r = client.post("/api/v1/sweeps", json={**spec, "dataset": "nope"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "dataset"]
    r = client.post(
        "/api/v1/sweeps", json={**spec, "dataset": ds["name"], "split": {"validation": 0.01, "test": 0.5}}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "split"]
    assert "validation 0" in r.json()["detail"][0]["msg"]

    # Refused while the sweep is queued; allowed once it is canceled; gone afterwards.
    r = client.delete(f"/api/v1/datasets/{ds['name']}")
    assert r.status_code == 409 and str(by_id.json()["id"]) in r.json()["detail"]
    client.post(f"/api/v1/sweeps/{by_id.json()['id']}/cancel")
    assert client.delete(f"/api/v1/datasets/{ds['id']}").status_code == 204
    assert client.get(f"/api/v1/datasets/{ds['id']}").status_code == 404
    assert client.get(f"/api/v1/sweeps/{by_id.json()['id']}").json()["dataset"] == ds["name"]  # results stay
