"""The Python API for notebooks and scripts: submit a spec, wait, get DataFrames back.

    import gridsweep
    client = gridsweep.Client()                    # GRIDSWEEP_SERVER / GRIDSWEEP_TOKEN
    sweep = client.submit("examples/moons.yaml")   # or a dict
    sweep.wait()
    sweep.trials()                                 # a DataFrame: a row per trial

It speaks HTTP to the API through ``gridsweep.client.ApiClient`` and needs neither torch nor
the server's packages; pandas is imported only by the methods that return a DataFrame.
Errors are exceptions: ``SpecError`` (its ``errors`` are the API's ``{loc, msg}`` with the
field path), ``NotFound``, ``Conflict``, ``Unreachable``, all ``GridsweepError``.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridsweep.client import SWEEP_ENDED, ApiClient, ApiError, sweep_polls
from gridsweep.specfile import SpecFileError, load_spec_file
from gridsweep.tables import columns, metric_columns, param_columns, trial_row
from gridsweep.vocab import EPOCH_METRICS, TEST_METRICS

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_SERVER = "http://127.0.0.1:8000"
PAGE = 500
TIME_COLUMNS = ("created_at", "started_at", "finished_at")


class GridsweepError(Exception):
    """An error from the API (``status_code``, ``detail``) or before a request was sent."""

    def __init__(self, message: str, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code, self.detail = status_code, detail


class SpecError(GridsweepError):
    """An invalid spec (or request): ``errors`` are ``{"loc": [...], "msg": ...}`` with field paths."""

    def __init__(self, message: str, errors: list[dict[str, Any]], status_code: int | None = None) -> None:
        super().__init__(message, status_code, errors)
        self.errors = errors


class NotFound(GridsweepError):
    """No such sweep, trial, dataset or model (404)."""


class Conflict(GridsweepError):
    """Refused in the current state (409): e.g. deleting a running sweep."""


class Unreachable(GridsweepError):
    """No API answered (or it is unavailable), or it refused the token (401, 403)."""


def _loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _error(exc: ApiError) -> GridsweepError:
    d, code = exc.detail, exc.status_code
    if code in (400, 413, 422):
        errors = [dict(e) for e in d] if isinstance(d, list) else [{"loc": [], "msg": str(d)}]
        for e in errors:
            e["loc"] = [p for i, p in enumerate(e.get("loc") or []) if not (i == 0 and p == "body")]
        lines = [f"{_loc(e['loc'])}: {e['msg']}" if e["loc"] else str(e["msg"]) for e in errors]
        return SpecError("; ".join(lines), errors, code)
    if code == 404:
        return NotFound(str(d), code, d)
    if code == 409:
        return Conflict(str(d), code, d)
    if code in (401, 403, 502, 503, 504):
        return Unreachable(str(d), code, d)
    return GridsweepError(f"HTTP {code}: {d}", code, d)


def _frame(rows: list[dict[str, Any]], cols: list[str]) -> pd.DataFrame:
    import pandas as pd

    df = pd.DataFrame(rows, columns=cols)
    for c in TIME_COLUMNS:
        if c in df.columns:
            df[c] = pd.to_datetime(df[c], utc=True, format="ISO8601")
    return df


class Client:
    """A gridsweep API. ``server`` defaults to ``GRIDSWEEP_SERVER`` (else http://127.0.0.1:8000),
    ``token`` to ``GRIDSWEEP_TOKEN``. Usable as a context manager (closes its connections)."""

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        retry_for: float = 10.0,
    ) -> None:
        self.server = (server or os.environ.get("GRIDSWEEP_SERVER") or DEFAULT_SERVER).rstrip("/")
        self.api = ApiClient(
            self.server,
            token=token or os.environ.get("GRIDSWEEP_TOKEN"),
            timeout=timeout,
            retry_for=retry_for,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.api.close()

    def __repr__(self) -> str:
        return f"gridsweep.Client({self.server!r})"

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """One API call (JSON in and out); API errors become ``GridsweepError`` subclasses."""
        try:
            return self.api.request(method, path, **kw)
        except ApiError as exc:
            raise _error(exc) from None

    # --- sweeps ------------------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any] | str | Path, idempotency_key: str | None = None) -> Sweep:
        """Submit a spec: a mapping, or the path of a YAML/JSON file (named after the file unless
        it says ``name``). The same ``idempotency_key`` and spec return the first sweep."""
        if isinstance(spec, str | Path):
            try:
                body = load_spec_file(spec)
            except SpecFileError as exc:
                raise SpecError(str(exc), [{"loc": [], "msg": str(exc)}]) from None
        else:
            body = dict(spec)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        created = self.request("POST", "/api/v1/sweeps", json=body, headers=headers)
        return self.sweep(created["id"])

    def sweep(self, sweep_id: int) -> Sweep:
        """The sweep ``sweep_id`` (``NotFound`` if there is none)."""
        return Sweep(self, self.request("GET", f"/api/v1/sweeps/{int(sweep_id)}"))

    def _pages(self, path: str, limit: int | None = None, **params: Any) -> Iterable[dict[str, Any]]:
        offset, seen = 0, 0
        while limit is None or seen < limit:
            size = PAGE if limit is None else min(PAGE, limit - seen)
            page = self.request("GET", path, params={**params, "limit": size, "offset": offset})
            yield from page["items"]
            seen += len(page["items"])
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def sweeps(self, limit: int | None = 200) -> pd.DataFrame:
        """Sweeps, newest first: id, name, dataset, status, phase, trials done, best, times."""
        rows = []
        for s in self._pages("/api/v1/sweeps", limit):
            c = s["counts"]
            best = s.get("best")
            rows.append(
                {
                    "id": s["id"],
                    "name": s["name"],
                    "dataset": s["dataset"],
                    "status": s["status"],
                    "phase": s.get("phase"),
                    "n_trials": s["n_trials"],
                    "done": sum(c.get(k, 0) for k in ("succeeded", "failed", "diverged", "canceled")),
                    "metric": s["metric"]["name"],
                    "best": best["validation"]["mean"] if best else None,
                    "created_at": s["created_at"],
                    "started_at": s.get("started_at"),
                    "finished_at": s.get("finished_at"),
                    "duration_seconds": s.get("duration_seconds"),
                }
            )
        cols = ["id", "name", "dataset", "status", "phase", "n_trials", "done", "metric", "best"]
        return _frame(rows, [*cols, *TIME_COLUMNS, "duration_seconds"])

    # --- datasets ----------------------------------------------------------------------

    def upload_dataset(
        self,
        data: str | Path | pd.DataFrame,
        target: str,
        name: str | None = None,
        task: str | None = None,
        categorical: Sequence[str] = (),
        drop_missing: bool = False,
    ) -> dict[str, Any]:
        """Upload a CSV or Parquet file, or a DataFrame (sent as Parquet; named ``df-<hash>`` unless
        ``name`` says). The same bytes are stored once. Returns the dataset (``id``, ``name``, ...)."""
        if isinstance(data, str | Path):
            filename, raw = Path(data).name, Path(data).read_bytes()
        else:
            buf = io.BytesIO()
            data.to_parquet(buf, index=False)
            raw = buf.getvalue()
            filename = f"df-{hashlib.sha256(raw).hexdigest()[:10]}.parquet"
        form: dict[str, Any] = {"target": target, "drop_missing": str(drop_missing).lower()}
        if categorical:
            form["categorical"] = list(categorical)
        if task:
            form["task"] = task
        if name:
            form["name"] = name
        return self.request("POST", "/api/v1/datasets", data=form, files={"file": (filename, raw)})

    def datasets(self) -> pd.DataFrame:
        """Uploaded datasets, newest first."""
        cols = ["id", "name", "task", "target", "n_rows", "n_features", "classes", "sha256", "created_at"]
        return _frame([{c: d.get(c) for c in cols} for d in self._pages("/api/v1/datasets")], cols)


class Sweep:
    """A sweep on the server. Its fields are as of the last ``refresh()`` (or ``wait()``)."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self.client = client
        self.data = data

    @property
    def id(self) -> int:
        return int(self.data["id"])

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def status(self) -> str:
        """queued, running, succeeded, failed or canceled (as of the last refresh)."""
        return str(self.data["status"])

    @property
    def phase(self) -> str | None:
        """queued, searching, evaluating (the best config on the test split), canceling, finished."""
        return self.data.get("phase")

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.data["counts"])

    @property
    def done(self) -> bool:
        return self.status in SWEEP_ENDED

    def __repr__(self) -> str:
        c = self.data.get("counts", {})
        ended = sum(c.get(k, 0) for k in ("succeeded", "failed", "diverged", "canceled"))
        return f"<Sweep {self.id} {self.name!r} {self.status}: {ended}/{self.data.get('n_trials')} trials>"

    def refresh(self) -> Sweep:
        """Read the sweep again (status, counts, progress, best)."""
        self.data = self.client.request("GET", f"/api/v1/sweeps/{self.id}")
        return self

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> Sweep:
        """Poll until the sweep ends (succeeded, failed or canceled); ``TimeoutError`` after
        ``timeout`` seconds (the sweep itself goes on). Each poll waits at the API for up to
        ``poll`` seconds (a long poll), so the answer comes the moment the sweep ends."""
        deadline = None if timeout is None else time.monotonic() + timeout
        path = f"/api/v1/sweeps/{self.id}"
        for sweep in sweep_polls(
            lambda w: self.client.request("GET", path, params={"wait_seconds": w}), poll, deadline
        ):
            self.data = sweep
        if not self.done:
            raise TimeoutError(f"sweep {self.id} still {self.status} after {timeout:g}s")
        return self

    def _trials(self, role: str | None) -> list[dict[str, Any]]:
        params = {"role": role} if role else {}
        return list(self.client._pages(f"/api/v1/sweeps/{self.id}/trials", **params))

    def trials(self, role: str = "search") -> pd.DataFrame:
        """A DataFrame with a row per trial of ``role`` (search, final, refit, rerun): id, role,
        config_index, seed, status, a column per grid parameter, one per metric, epochs_done,
        duration_seconds (training time; in a fused pack its share of the pack's), wall_seconds..."""
        trials = self._trials(role)
        axes = list((self.data.get("spec") or {}).get("parameters") or {})
        params = param_columns(trials, axes)
        fields = list(trials[0]) if trials else []
        metrics = metric_columns(fields) or metric_columns(_KNOWN_METRICS)
        cols = columns(params, metrics)
        return _frame([trial_row(t, params, metrics) for t in trials], cols)

    def trial(self, trial_id: int) -> dict[str, Any]:
        """One trial with its per-epoch curve (``epochs``)."""
        return self.client.request("GET", f"/api/v1/trials/{int(trial_id)}")

    def best(self) -> dict[str, Any] | None:
        """The best config: params, validation mean/std and per seed, test (and refit) metrics;
        None before any trial succeeded."""
        try:
            return self.client.request("GET", f"/api/v1/sweeps/{self.id}/best")
        except NotFound:
            return None

    def leaderboard(self, limit: int = 10) -> pd.DataFrame:
        """The top configs: rank, a column per grid parameter, mean and std of the metric, seeds."""
        board = self.client.request("GET", f"/api/v1/sweeps/{self.id}/leaderboard", params={"limit": limit})
        params = param_columns(board, list((self.data.get("spec") or {}).get("parameters") or {}))
        rows = [
            {"rank": e["rank"], "config_index": e["config_index"], **{p: e["params"].get(p) for p in params}}
            | {"mean": e["mean"], "std": e["std"], "n_seeds": e["n_seeds"], "trial_ids": e["trial_ids"]}
            for e in board
        ]
        return _frame(rows, ["rank", "config_index", *params, "mean", "std", "n_seeds", "trial_ids"])

    def cancel(self) -> Sweep:
        """Cancel: queued trials now, running ones at their next epoch."""
        self.data = self.client.request("POST", f"/api/v1/sweeps/{self.id}/cancel")
        return self

    def delete(self) -> None:
        """Delete the sweep with its trials, epochs and models (``Conflict`` while it runs)."""
        self.client.request("DELETE", f"/api/v1/sweeps/{self.id}")

    def _download(self, path: str | Path, url: str, params: dict[str, Any]) -> Path:
        out = Path(path)
        part = out.with_name(out.name + ".part")
        try:
            with part.open("wb") as f:
                self.client.api.download(url, f, params=params)
        except ApiError as exc:
            part.unlink(missing_ok=True)
            raise _error(exc) from None
        part.replace(out)
        return out

    def export(self, path: str | Path, format: str | None = None, role: str | None = None) -> Path:
        """Write the trials (of ``role``, default all) to ``path``: CSV, or Parquet for a
        ``.parquet`` path (or ``format``). Same columns as ``trials()``."""
        fmt = format or ("parquet" if Path(path).suffix.lower() in (".parquet", ".pq") else "csv")
        params = {"format": fmt, **({"role": role} if role else {})}
        return self._download(path, f"/api/v1/sweeps/{self.id}/export", params)

    def download_model(self, path: str | Path, kind: str = "best", format: str = "state_dict") -> Path:
        """Save the sweep's model (``kind`` best or refit; ``format`` state_dict or torchscript);
        load it with ``worker.model_io.load_model``."""
        return self._download(path, f"/api/v1/sweeps/{self.id}/model", {"kind": kind, "format": format})


# Metric columns of an empty DataFrame (when there is no trial to read the API's fields from).
_KNOWN_METRICS = (*EPOCH_METRICS, *TEST_METRICS)
