"""The progress bar on a terminal (``gridsweep run``, ``submit --wait``), drawn with Rich on stderr.

One line that redraws itself: the phase, trials done over the grid, the epochs of the
running trials, the best so far, elapsed time and the ETA, all as the API reports them
(``GET /api/v1/sweeps/{id}``): the numbers are the server's, not a local clock's.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from app.cli import output as out


class LiveBar:
    """A Rich progress bar fed with the sweep's JSON; ``close()`` leaves its last state on screen."""

    def __init__(self, sweep_id: int, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]sweep {task.fields[sweep]}[/] {task.fields[phase]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("trials · {task.fields[epochs]} · {task.fields[best]}"),
            TextColumn("· elapsed {task.fields[elapsed]} · ETA {task.fields[eta]}"),
            console=self.console,
            auto_refresh=False,
            transient=False,
        )
        self.task = self.progress.add_task(
            "sweep", total=None, sweep=sweep_id, phase="", epochs="", best="", elapsed="-", eta="-"
        )
        self.started = self.closed = False

    def update(self, sweep: dict[str, Any]) -> None:
        phase = sweep.get("phase") or sweep["status"]
        self.progress.update(
            self.task,
            total=sweep["n_trials"],
            completed=out.trials_done(sweep),
            phase=out.PHASE_WORDS.get(phase, phase),
            epochs=out.epochs_text(sweep),
            best=out.best_so_far(sweep),
            elapsed=out.clock(sweep.get("duration_seconds") or sweep.get("elapsed_seconds")),
            eta=out.clock(sweep.get("eta_seconds")) if sweep.get("eta_seconds") is not None else "-",
        )
        if not self.started:  # drawn first with the sweep's numbers, not empty fields
            self.started = True
            self.progress.start()
        self.progress.refresh()

    def close(self) -> None:
        if self.started and not self.closed:
            self.closed = True
            self.progress.stop()
