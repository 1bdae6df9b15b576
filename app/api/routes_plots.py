"""Read-side routes behind the sweep plots (JSON; the dashboard draws them)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status

from app.api.deps import ERROR_RESPONSES, IdPath, ReadSessionDep
from app.auth import require
from app.models import Sweep, TokenScope
from app.plot_schemas import ConfigsRead, CurvesRead, HeatmapRead, HistoryRead
from app.services import plots
from app.services.sweeps import get_sweep
from app.spec import AXES

router = APIRouter(
    prefix="/api/v1/sweeps",
    tags=["plots"],
    dependencies=[require(write=TokenScope.submit)],
    responses=ERROR_RESPONSES,
)

Axis = Literal[AXES]  # type: ignore[valid-type]


def _sweep_or_404(session: ReadSessionDep, sweep_id: int) -> Sweep:
    sweep = get_sweep(session, sweep_id)
    if sweep is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} not found")
    return sweep


@router.get("/{sweep_id}/curves", response_model=CurvesRead)
def get_curves(
    sweep_id: IdPath, session: ReadSessionDep, top: Annotated[int, Query(ge=1, le=100)] = 10
) -> CurvesRead:
    """Validation loss per epoch of every seed of the top configs, best first."""
    return CurvesRead.model_validate(plots.learning_curves(session, _sweep_or_404(session, sweep_id), top))


@router.get("/{sweep_id}/history", response_model=HistoryRead)
def get_history(sweep_id: IdPath, session: ReadSessionDep) -> HistoryRead:
    """Finished trials in completion order with their metric and the best so far."""
    return HistoryRead.model_validate(plots.completion_history(session, _sweep_or_404(session, sweep_id)))


@router.get("/{sweep_id}/heatmap", response_model=HeatmapRead)
def get_heatmap(sweep_id: IdPath, session: ReadSessionDep, x: Axis, y: Axis) -> HeatmapRead:
    """The metric over parameters ``x`` and ``y``, each cell the best over the other parameters."""
    if x == y:
        detail = [{"loc": ["query", "y"], "msg": "y must differ from x", "type": "value_error"}]
        raise HTTPException(422, detail)
    return HeatmapRead.model_validate(plots.heatmap(session, _sweep_or_404(session, sweep_id), x, y))


@router.get("/{sweep_id}/configs", response_model=ConfigsRead)
def get_configs(
    sweep_id: IdPath, session: ReadSessionDep, limit: Annotated[int, Query(ge=1, le=10_000)] = 2000
) -> ConfigsRead:
    """The best configs with their grid parameters and mean metric (parallel coordinates)."""
    return ConfigsRead.model_validate(plots.config_scores(session, _sweep_or_404(session, sweep_id), limit))
