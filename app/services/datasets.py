"""Uploaded datasets: store once by content hash, look up by id or name, check a split, delete.

The file is parsed and validated once (``app.tabular``); what is stored is the encoded
arrays (``gridsweep.payload``), so workers need neither pandas nor the original file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, undefer

from app.db import db_now
from app.models import Dataset, Sweep, SweepStatus, Trial, TrialStatus
from app.spec import SpecError, SplitSpec
from app.tabular_types import Encoding, TableError, min_rows_for_split
from gridsweep.datasets import BUILTIN_DATASETS, load_builtin, make_dataset, split_dataset
from gridsweep.payload import fingerprint, pack, unpack

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class DatasetConflict(Exception):
    """409: the request clashes with a stored dataset (name taken, same bytes read differently, in use)."""


@dataclass(frozen=True)
class UploadOptions:
    target: str
    task: str | None = None
    name: str | None = None
    categorical: tuple[str, ...] = ()
    drop_missing: bool = False

    def reading(self) -> dict[str, Any]:
        """What decides how the bytes are read (compared when the same bytes come again)."""
        return {
            "target": self.target,
            "task": self.task,
            "categorical": sorted(self.categorical),
            "drop_missing": self.drop_missing,
        }


MAX_DROPPED_ROWS_KEPT = 1000  # the rows drop_missing dropped, as kept in the schema (the count is exact)


def default_name(filename: str | None) -> str:
    stem = re.sub(r"\.(csv|parquet|pq|txt)$", "", (filename or "dataset").rsplit("/", 1)[-1], flags=re.I)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "dataset"
    return name[:200]


def check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name) or name.isdigit() or name in BUILTIN_DATASETS:
        raise TableError(
            [
                {
                    "loc": ("name",),
                    "msg": f"invalid dataset name {name!r}: letters, digits, '.', '_' and '-' "
                    "(up to 200), not all digits and not a built-in dataset name",
                }
            ]
        )


def find_dataset(session: Session, ref: str | int) -> Dataset | None:
    """An uploaded dataset by id (an integer or all-digit string) or by name."""
    ref = str(ref)
    if ref.isascii() and ref.isdigit():  # not "²": str.isdigit takes digits int() refuses
        # An id past the INTEGER column (PostgreSQL int4, 64-bit SQLite) is no row, not a driver error.
        return session.get(Dataset, int(ref)) if int(ref) <= 2**31 - 1 else None
    return session.scalars(select(Dataset).where(Dataset.name == ref)).first()


def list_datasets(session: Session, limit: int, offset: int) -> tuple[list[Dataset], int]:
    total = session.scalar(select(func.count()).select_from(Dataset)) or 0
    rows = session.scalars(select(Dataset).order_by(Dataset.id.desc()).limit(limit).offset(offset)).all()
    return list(rows), total


def sweeps_per_dataset(session: Session, dataset_ids: list[int]) -> dict[int, int]:
    """How many sweeps train on each of ``dataset_ids`` (absent: none)."""
    if not dataset_ids:
        return {}
    q = (
        select(Sweep.dataset_id, func.count())
        .where(Sweep.dataset_id.in_(dataset_ids))
        .group_by(Sweep.dataset_id)
    )
    return {int(k): int(n) for k, n in session.execute(q).all()}


def create_dataset(
    session: Session, raw: bytes, filename: str | None, opts: UploadOptions
) -> tuple[Dataset, bool]:
    """Store an upload once; returns ``(dataset, created)``. Raises TableError (422) or DatasetConflict."""
    sha = hashlib.sha256(raw).hexdigest()
    existing = session.scalars(select(Dataset).where(Dataset.sha256 == sha)).first()
    if existing is not None:
        return _same_bytes(existing, opts), False
    name = opts.name or default_name(filename)
    check_name(name)
    taken = find_dataset(session, name)
    if taken is not None:
        raise DatasetConflict(
            f"the name {name!r} is taken by dataset {taken.id} (different content); choose another name"
        )
    from app.tabular import prepare_table  # pandas: only when a file is read

    table = prepare_table(raw, filename, opts.target, opts.task, opts.categorical, opts.drop_missing)
    ds = make_dataset(name, table.task, table.X, table.y, table.encoding.feature_names)
    meta = {"target": opts.target, "encoding": table.encoding.to_dict()}
    row = Dataset(
        name=name,
        sha256=sha,
        data_hash=fingerprint(ds),
        format=table.format,
        task=table.task,
        target=opts.target,
        classes=ds.classes,
        n_rows=ds.n_rows,
        n_features=ds.n_features,
        schema={
            "columns": table.columns,
            "feature_names": ds.feature_names,
            "encoding": table.encoding.to_dict(),
            "task_source": table.task_source,
            "task_reason": table.task_reason,
            "n_dropped": table.n_dropped,
            "dropped_rows": table.dropped_rows[:MAX_DROPPED_ROWS_KEPT],
            "options": opts.reading(),
        },
        size_bytes=len(raw),
        data=pack(ds, meta),
        created_at=db_now(session),
    )
    try:
        # A savepoint: a concurrent upload of the same bytes or name loses the race cleanly.
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        again = session.scalars(select(Dataset).where(Dataset.sha256 == sha)).first()
        if again is not None:
            return _same_bytes(again, opts), False
        raise DatasetConflict(f"the name {name!r} was just taken by another upload") from None
    return row, True


def _same_bytes(existing: Dataset, opts: UploadOptions) -> Dataset:
    stored = dict(existing.schema.get("options", {}))
    asked = opts.reading()
    # The task may be left out, or named as the one the first upload was given or inferred.
    if opts.task in (None, existing.task):
        asked["task"] = stored["task"] = existing.task
    if stored != asked:
        raise DatasetConflict(
            f"these bytes are already stored as dataset {existing.id} ({existing.name!r}) read with "
            f"{stored}; they cannot be stored again read with {asked}"
        )
    return existing


def dataset_bytes(session: Session, dataset_id: int) -> tuple[Dataset, bytes] | None:
    row = session.scalars(
        select(Dataset).where(Dataset.id == dataset_id).options(undefer(Dataset.data))
    ).first()
    return None if row is None else (row, row.data)


def encoding_of(ds: Dataset) -> Encoding:
    return Encoding.from_dict(ds.schema["encoding"])


# Built-in classification sets are balanced: with more training rows than this, the split
# cannot miss a class (it would take ~1e-15 luck), so only smaller splits are generated to check.
BUILTIN_TRAIN_ROWS_CHECKED = 50


def _check_split_rows(name: str, n_rows: int, split: SplitSpec) -> int:
    """The split must leave every part a row: SpecError at ``split``; the training rows."""
    n_train, n_val, n_test = min_rows_for_split(n_rows, split.validation, split.test)
    if min(n_train, n_val, n_test) < 1:
        raise SpecError(
            [
                {
                    "loc": ("split",),
                    "msg": f"dataset {name!r} has {n_rows} rows: validation={split.validation}, "
                    f"test={split.test} leaves train {n_train}, validation {n_val}, test {n_test} rows; "
                    "every part needs at least 1",
                }
            ]
        )
    return n_train


def _check_split_classes(name: str, data: Any, split: SplitSpec) -> None:
    try:
        split_dataset(data, split.validation, split.test, split.seed)
    except ValueError as exc:
        raise SpecError([{"loc": ("split",), "msg": f"dataset {name!r}: {exc}"}]) from exc


def check_split(ds: Dataset, split: SplitSpec) -> None:
    """The split must leave rows (and, for classification, 2 classes in training): SpecError at ``split``."""
    _check_split_rows(ds.name, ds.n_rows, split)
    if ds.task == "classification":
        data, _ = unpack(ds.data)  # the deferred column of the row in hand: no second lookup
        _check_split_classes(ds.name, data, split)


def check_builtin_split(name: str, split: SplitSpec) -> None:
    """``check_split`` for a built-in dataset (generated only when a class could be missing)."""
    info = BUILTIN_DATASETS[name]
    n_train = _check_split_rows(name, info.n_rows, split)
    if info.task == "classification" and n_train <= BUILTIN_TRAIN_ROWS_CHECKED:
        _check_split_classes(name, load_builtin(name), split)


def sweeps_using(session: Session, ds: Dataset) -> list[int]:
    """Sweeps still at work on the dataset: queued or running, or with a queued/running trial."""
    active = select(Sweep.id).where(
        Sweep.dataset_id == ds.id, Sweep.status.in_((SweepStatus.queued, SweepStatus.running))
    )
    busy = (
        select(Trial.sweep_id)
        .join(Sweep, Sweep.id == Trial.sweep_id)
        .where(Sweep.dataset_id == ds.id, Trial.status.in_((TrialStatus.queued, TrialStatus.running)))
    )
    return sorted(set(session.scalars(active).all()) | set(session.scalars(busy).all()))


def delete_dataset(session: Session, ds: Dataset) -> None:
    """Delete, unless a sweep is at work on it (DatasetConflict). Finished sweeps keep their results."""
    using = sweeps_using(session, ds)
    if using:
        raise DatasetConflict(f"dataset {ds.id} ({ds.name!r}) is in use by sweep(s) {using}; cancel or wait")
    session.delete(ds)
    session.flush()
