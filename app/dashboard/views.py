"""What each dashboard page shows: template contexts built from the services' read-side queries."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.orm import Session

from app.config import Settings
from app.dashboard.format import AXIS_LABELS, STATUS_ORDER, spec_rows, spec_yaml
from app.models import Sweep, SweepStatus, Trial, TrialRole, TrialStatus, Worker
from app.schemas import DB_INT_MAX
from app.services.artifacts import list_models
from app.services.datasets import list_datasets, sweeps_per_dataset
from app.services.overview import sweep_pulse, sweep_rows, trial_page, worker_rows
from app.services.plots import grid_axes
from app.services.progress import SweepProgress, sweep_progress
from app.services.pruning import pruning_report, trial_rungs
from app.services.reads import best_read, trial_read
from app.services.sweeps import get_sweep
from app.services.trial_queries import SORTABLE, trial_epochs
from gridsweep.vocab import EPOCH_METRICS, TEST_METRICS

SWEEPS_PER_PAGE = 50
PAGE_SIZES = (25, 50, 100, 200)
LIVE_SWEEP = (SweepStatus.queued, SweepStatus.running)


class PageError(Exception):
    """A page that cannot be shown: the status code and a sentence for the user."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def _int(raw: str | None, name: str, default: int, lo: int = 1) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PageError(400, f"{name} must be a whole number, got {raw!r}") from None
    if value < lo:
        raise PageError(400, f"{name} must be at least {lo}, got {value}")
    if value > DB_INT_MAX:  # LIMIT/OFFSET are 32/64-bit in the database: a huge one is a 400, not a 500
        raise PageError(400, f"{name} must be at most {DB_INT_MAX}, got {value}")
    return value


@dataclass(frozen=True)
class TableState:
    """The trials table's filter, sort and page, as carried in the URL."""

    status: str = ""
    sort: str = "id"
    order: str = "asc"
    page: int = 1
    size: int = 50

    @classmethod
    def parse(cls, q: Any, axes: list[str]) -> TableState:
        status = q.get("status") or ""
        if status and status not in STATUS_ORDER:
            raise PageError(400, f"status must be one of {', '.join(STATUS_ORDER)}; got {status!r}")
        sort = q.get("sort") or "id"
        if sort not in (*SORTABLE, "metric", *(f"params.{a}" for a in axes)):
            raise PageError(400, f"cannot sort trials by {sort!r}")
        order = q.get("order") or "asc"
        if order not in ("asc", "desc"):
            raise PageError(400, f"order must be asc or desc, got {order!r}")
        size = _int(q.get("size"), "size", 50)
        if size not in PAGE_SIZES:
            raise PageError(400, f"size must be one of {PAGE_SIZES}, got {size}")
        return cls(status, sort, order, _int(q.get("page"), "page", 1), size)

    def query(self, **changes: Any) -> str:
        """The query string of this state with ``changes`` (defaults left out)."""
        state = replace(self, **changes)
        defaults = TableState()
        pairs = {k: getattr(state, k) for k in ("status", "sort", "order", "page", "size")}
        return urlencode({k: v for k, v in pairs.items() if v != getattr(defaults, k)})

    def sorted_by(self, column: str) -> str:
        """The query that sorts by ``column``: ascending first, a second click flips the order."""
        if self.sort == column:
            return self.query(order="desc" if self.order == "asc" else "asc", page=1)
        return self.query(sort=column, order="asc", page=1)


def sweeps_context(session: Session, page_raw: str | None) -> dict[str, Any]:
    page = _int(page_raw, "page", 1)
    rows, total = sweep_rows(session, SWEEPS_PER_PAGE, (page - 1) * SWEEPS_PER_PAGE)
    progress = sweep_progress(session, [r.sweep for r in rows])
    return {
        "rows": rows,
        "progress_of": progress,
        "shares": {sid: running_share(p) for sid, p in progress.items()},
        "total": total,
        "page": page,
        "pages": max(1, -(-total // SWEEPS_PER_PAGE)),
        "live": any(r.sweep.status in LIVE_SWEEP or progress[r.sweep.id].running for r in rows),
    }


def sweep_or_error(session: Session, sweep_id: int) -> Sweep:
    sweep = get_sweep(session, sweep_id)
    if sweep is None:
        raise PageError(404, f"There is no sweep {sweep_id}.")
    return sweep


def running_share(progress: SweepProgress) -> float:
    """The running trials' epochs as a number of trials (4 trials halfway: 2.0), for the bar."""
    if not progress.running or not progress.running_epochs_planned:
        return 0.0
    return progress.running * progress.running_epochs_done / progress.running_epochs_planned


def summary_context(session: Session, sweep: Sweep) -> dict[str, Any]:
    """The live part of a sweep page: status, phase, progress, counts, the best config, models."""
    pulse = sweep_pulse(session, sweep)
    progress = sweep_progress(session, [sweep])[sweep.id]
    return {
        "sweep": sweep,
        "pulse": pulse,
        "prog": progress,
        "running_share": running_share(progress),
        "finished": sum(pulse.counts[s] for s in ("succeeded", "failed", "diverged")),
        "best": best_read(session, sweep),
        "pruning": pruning_report(session, sweep),
        "axes": grid_axes(sweep),
        # A canceled sweep keeps polling until its running trials have stopped: counts and status agree.
        "live": sweep.status in LIVE_SWEEP or progress.running > 0,
        "cancelable": sweep.status in LIVE_SWEEP,
        "statuses": STATUS_ORDER,
        "models": list_models(session, sweep.id),
    }


def table_context(session: Session, sweep: Sweep, query: Any) -> dict[str, Any]:
    axes = grid_axes(sweep)
    state = TableState.parse(query, axes)
    result = trial_page(
        session,
        sweep,
        status=[state.status] if state.status else None,
        sort=state.sort,
        order=state.order,
        limit=state.size,
        offset=(state.page - 1) * state.size,
    )
    pages = max(1, -(-result.total // state.size))
    return {
        "sweep": sweep,
        "state": state,
        "table": result,
        "pages": pages,
        "axes": axes,
        "axis_labels": AXIS_LABELS,
        "statuses": STATUS_ORDER,
        "page_sizes": PAGE_SIZES,
        "first_row": (state.page - 1) * state.size + 1 if result.total else 0,
        "last_row": min(state.page * state.size, result.total),
    }


def sweep_context(session: Session, sweep_id: int, query: Any) -> dict[str, Any]:
    sweep = sweep_or_error(session, sweep_id)
    axes = grid_axes(sweep)
    return {
        **summary_context(session, sweep),
        **table_context(session, sweep, query),
        "spec_rows": spec_rows(sweep.spec),
        "spec_yaml": spec_yaml(sweep.spec),
        **_heatmap_axes(axes),
        "axis_labels": AXIS_LABELS,
    }


def _heatmap_axes(axes: list[str]) -> dict[str, str | None]:
    """Learning rate across and width down when the grid has them, else the first two axes."""
    x = "learning_rate" if "learning_rate" in axes else (axes[0] if axes else None)
    rest = [a for a in axes if a != x]
    y = "hidden_units" if "hidden_units" in rest else (rest[0] if rest else None)
    return {"heatmap_x": x, "heatmap_y": y}


def summary_for(session: Session, sweep_id: int) -> dict[str, Any]:
    return summary_context(session, sweep_or_error(session, sweep_id))


def table_for(session: Session, sweep_id: int, query: Any) -> dict[str, Any]:
    return table_context(session, sweep_or_error(session, sweep_id), query)


def trial_context(session: Session, trial_id: int) -> dict[str, Any]:
    trial = session.get(Trial, trial_id)
    if trial is None:
        raise PageError(404, f"There is no trial {trial_id}.")
    sweep = trial.sweep
    worker = session.get(Worker, trial.worker_id) if trial.worker_id else None
    return {
        "trial": trial,
        "sweep": sweep,
        "worker": worker,
        "epochs": trial_epochs(session, trial),
        "rungs": trial_rungs(session, trial),
        "axes": grid_axes(sweep),
        "live": trial.status in (TrialStatus.queued, TrialStatus.running),
        "wall_seconds": trial_read(trial).wall_seconds,
        # A refit trial trained on the validation split too: its val_* numbers are not a validation.
        "val_on_training_data": trial.role == TrialRole.refit,
        "metric_names": (*EPOCH_METRICS, *TEST_METRICS),
    }


def datasets_context(session: Session, page_raw: str | None) -> dict[str, Any]:
    page = _int(page_raw, "page", 1)
    rows, total = list_datasets(session, SWEEPS_PER_PAGE, (page - 1) * SWEEPS_PER_PAGE)
    return {
        "rows": rows,
        "used": sweeps_per_dataset(session, [d.id for d in rows]),
        "total": total,
        "page": page,
        "pages": max(1, -(-total // SWEEPS_PER_PAGE)),
    }


def workers_context(session: Session, settings: Settings) -> dict[str, Any]:
    return {"rows": worker_rows(session, settings.lease_seconds)}
