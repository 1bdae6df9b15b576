"""A sweep's trials as a CSV or Parquet file, produced in batches so that it can be streamed.

The rows are ``gridsweep.tables`` rows of the API's own trial JSON (``TrialRead``), so the
export has exactly the columns of the Python client's ``Sweep.trials()`` DataFrame: one per
grid parameter, one per metric the API returns, then how each trial ran.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Sweep, Trial
from app.schemas import TrialRead
from app.services.reads import trial_read
from app.spec import AXES
from gridsweep.tables import columns, metric_columns, trial_row

BATCH = 1000
FORMATS = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
INT_COLUMNS = (
    "id",
    "config_index",
    "seed",
    "epochs_done",
    "best_epoch",
    "stopped_epoch",
    "attempt",
    "rerun_of",
)
TEXT_COLUMNS = ("role", "status", "device", "error")
TIME_COLUMNS = ("started_at", "finished_at")


def export_layout() -> tuple[list[str], list[str]]:
    """(parameter columns, metric columns) of an export: every grid axis, every metric field."""
    return list(AXES), metric_columns(TrialRead.model_fields)


def trial_batches(
    session: Session, sweep: Sweep, role: str | None, json_mode: bool
) -> Iterator[list[dict[str, Any]]]:
    """The sweep's trials (of ``role``, or all) as rows, ``BATCH`` at a time, in id order."""
    params, metrics = export_layout()
    last = 0
    while True:
        q = select(Trial).where(Trial.sweep_id == sweep.id, Trial.id > last)
        if role:
            q = q.where(Trial.role == role)
        rows = session.scalars(q.order_by(Trial.id).limit(BATCH)).all()
        if not rows:
            return
        last = rows[-1].id
        mode = "json" if json_mode else "python"
        yield [trial_row(trial_read(t).model_dump(mode=mode), params, metrics, flat=True) for t in rows]
        session.expunge_all()  # a big sweep: do not keep every row in the session


def csv_chunks(batches: Iterator[list[dict[str, Any]]]) -> Iterator[bytes]:
    """A header line, then one chunk of CSV per batch."""
    cols = columns(*export_layout())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for batch in batches:
        writer.writerows(batch)
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()


def _param_type(values: list[Any]) -> Any:
    import pyarrow as pa

    if values and all(isinstance(v, bool) for v in values):
        return pa.bool_()
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pa.int64()
    if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return pa.float64()
    return pa.string()  # text, and per-layer width lists as JSON text


def parquet_schema(sweep: Sweep) -> Any:
    """Column types: ints, floats, text, UTC times; a parameter's from its grid values."""
    import pyarrow as pa

    params, metrics = export_layout()
    spec_params = sweep.spec.get("parameters") or {}
    fields = []
    for c in columns(params, metrics):
        if c in params:
            t = _param_type(list(spec_params.get(c) or []))
        elif c in INT_COLUMNS:
            t = pa.int64()
        elif c in TEXT_COLUMNS:
            t = pa.string()
        elif c in TIME_COLUMNS:
            t = pa.timestamp("us", tz="UTC")
        else:
            t = pa.float64()
        fields.append(pa.field(c, t))
    return pa.schema(fields)


class _Sink:
    """A write-only file that hands out what was written so far and keeps counting positions
    (the Parquet footer records offsets, so ``tell`` must count every byte ever written)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def parquet_chunks(batches: Iterator[list[dict[str, Any]]], sweep: Sweep) -> Iterator[bytes]:
    """A Parquet file, one row group per batch, handed out as it is written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema(sweep)
    params, _ = export_layout()
    # A parameter of mixed values (widths and per-layer lists) is a text column: each value as JSON.
    text = [c for c in params if schema.field(c).type == pa.string()]
    sink = _Sink()
    with pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema) as writer:
        for batch in batches:
            for row in batch:
                for c in text:
                    if row[c] is not None and not isinstance(row[c], str):
                        row[c] = json.dumps(row[c])
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            if chunk := sink.take():
                yield chunk
    if rest := sink.take():
        yield rest
