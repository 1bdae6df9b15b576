"""The worker's fused path: a claimed pack trained at once, reported in batched calls.

One ``POST .../epochs`` per pack and epoch carries every trial's metrics; one
``POST .../complete`` carries the trials that leave the pack together (diverged,
canceled, or done). A reporter thread sends them in order while training goes on:
the answers' ``lost``/``cancel`` states are applied per trial as they arrive, and
act at the next epoch end. The heartbeat thread keeps every held lease alive.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from worker.client import ApiError
from worker.config import TrialConfig
from worker.fused import PackStopped
from worker.fused_packs import train_packs
from worker.train import EpochMetrics, TrialResult

if TYPE_CHECKING:
    from worker.loop import Worker

log = logging.getLogger("gridsweep.worker")


def failure_message(exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(exc)[-3:])
    return f"{type(exc).__name__}: {exc}\n{tb}"[:20_000]


def run_pack(w: Worker, claimed: list[dict[str, Any]]) -> int:
    """Train ``claimed`` (held by ``w``) fused; return how many outcomes the API accepted.

    Final trials (test evaluation, refit) are trained one by one (``Worker.run_one``: the
    engine as a pack of one, which uploads their models): there are few of them, and a
    trial's numbers are the same in a pack of one as in any pack.
    """
    from worker.loop import Abandon  # the loop module imports this one

    singles = [c for c in claimed if c["evaluate_test"] or c["refit"]]
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in claimed:  # the API packs by these already; grouping again keeps a pack trainable
        if not (c["evaluate_test"] or c["refit"]):
            shared = [c["params"].get(k) for k in ("batch_size", "epochs", "optimizer", "loss")]
            key = [c["dataset"], c["split"], c.get("dataset_id"), c.get("data_hash"), shared]
            groups.setdefault(json.dumps(key, sort_keys=True), []).append(c)
    n = 0
    for cs in groups.values():
        if w.stopping.is_set():
            return n  # the rest are released by Worker.run
        reporter = Reporter(w)
        try:
            _run_group(w, cs, reporter)
        except Abandon:
            pass  # the worker is stopping: Worker.run releases the unfinished trials
        finally:
            n += reporter.close()
    for c in singles:
        if w.stopping.is_set():
            break
        n += w.run_one(c)
    return n


class Reporter:
    """Sends a pack's epoch reports and outcomes, in order, on a thread of its own."""

    def __init__(self, w: Worker) -> None:
        self.w = w
        self.items: queue.Queue[tuple[str, list[dict[str, Any]]] | None] = queue.Queue()
        self.accepted = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self.thread.start()

    def epochs(self, reports: list[dict[str, Any]]) -> None:
        self._put("epochs", reports)

    def release_oom(self, refs: list[dict[str, Any]], error: str) -> None:
        """Hand trials that do not fit this device back to be retried (the attempt counts)."""
        self._put("release_oom", [{**r, "error": error} for r in refs])

    def complete(self, outcomes: list[dict[str, Any]]) -> None:
        for o in outcomes:
            o.setdefault("device", self.w.device_name)
        self._put("complete", outcomes)

    def _put(self, kind: str, payload: list[dict[str, Any]]) -> None:
        if self.error is not None:
            raise self.error  # the API stayed unreachable: stop like the one-by-one path does
        if payload:
            self.items.put((kind, payload))

    def close(self) -> int:
        """Send what is queued; return how many outcomes were accepted."""
        self.items.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.accepted

    def _run(self) -> None:
        w = self.w
        while (item := self.items.get()) is not None:
            if self.error is not None:
                continue
            kind, payload = item
            try:
                if kind == "epochs":
                    w.held.apply(w.client.report_epochs(w.worker_id, payload))
                    continue
                if kind == "release_oom":
                    for r in payload:  # one call each: every trial keeps its own error
                        ref = {"trial_id": r["trial_id"], "lease_token": r["lease_token"]}
                        w.client.release(w.worker_id, [ref], reason="out_of_memory", error=r["error"])
                        w._forget(r["trial_id"])
                    continue
                started = time.monotonic()
                states = w.client.complete(w.worker_id, payload)
                for o in payload:
                    w._forget(o["trial_id"])
                self.accepted += sum(1 for o in payload if states.get(o["trial_id"]) == "ok")
                log.info("%d trials reported (%.2fs)", len(payload), time.monotonic() - started)
            except BaseException as exc:
                self.error = exc


def _ref(c: dict[str, Any]) -> dict[str, Any]:
    return {"trial_id": c["trial_id"], "lease_token": c["lease_token"]}


def _run_group(w: Worker, claimed: list[dict[str, Any]], reporter: Reporter) -> None:
    from worker.handback import versions
    from worker.loop import Abandon, _finite

    head = claimed[0]
    source = (head["dataset"], head["split"], head.get("dataset_id"), head.get("data_hash"))
    # What a rerun needs, as the one-by-one path records it.
    repro: dict[str, Any] = {"split": head["split"], "versions": versions(), "device": w.device_name}
    try:
        data = w.data.get(*source)
        repro["data_hash"] = w.data.info(*source).data_hash
    except Exception as exc:
        log.exception("loading %s failed", head["dataset"])
        reporter.complete(
            [{**_ref(c), **repro, "status": "failed", "error": failure_message(exc)} for c in claimed]
        )
        return
    trials: list[dict[str, Any]] = []
    cfgs: list[TrialConfig] = []
    failed: list[dict[str, Any]] = []
    for c in claimed:
        try:
            cfgs.append(TrialConfig.from_params(c["params"], c["seed"], data.task, data.n_classes))
            trials.append(c)
        except Exception as exc:  # one bad trial fails alone
            failed.append({**_ref(c), **repro, "status": "failed", "error": failure_message(exc)})
    reporter.complete(failed)
    finished: set[int] = set()

    def on_epoch(epoch: int, metrics: dict[int, EpochMetrics]) -> dict[int, str]:
        reporter.epochs([{**_ref(trials[i]), **_finite(m.to_dict())} for i, m in metrics.items()])
        if w.stopping.is_set():
            raise Abandon
        answer: dict[int, str] = {}
        with w.held.lock:
            for i in metrics:
                tid = trials[i]["trial_id"]
                if tid in w.held.lost:
                    answer[i] = "drop"
                elif tid in w.held.cancel:
                    answer[i] = "cancel"
        return answer

    def on_finish(results: dict[int, TrialResult]) -> None:
        outcomes = []
        for i, r in results.items():
            finished.add(i)
            if r.status == "dropped":
                log.warning("trial %s: lease lost, dropping it", trials[i]["trial_id"])
                w._forget(trials[i]["trial_id"])
                continue
            if r.status == "out_of_memory":
                log.warning("trial %s: out of memory on %s, giving it back", trials[i]["trial_id"], w.device)
                reporter.release_oom([_ref(trials[i])], r.error or "out of memory")
                continue
            metrics = _finite({**r.metrics, **(r.test_metrics or {})})
            outcomes.append(
                {
                    **_ref(trials[i]),
                    **repro,
                    "status": r.status,
                    "metrics": metrics,
                    "epochs_done": len(r.epochs),
                    "error": r.error,
                    "duration_seconds": r.duration_seconds,
                }
            )
        reporter.complete(outcomes)

    started = time.monotonic()

    def should_stop() -> bool:  # asked every step: a SIGTERM stops the pack at once
        return w.stopping.is_set()

    try:
        train_packs(
            cfgs,
            data,
            threads=w.pack_threads,
            on_epoch=on_epoch,
            on_finish=on_finish,
            allow_tf32=w.allow_tf32,
            should_stop=should_stop,
        )
    except PackStopped:
        raise Abandon from None  # Worker.run releases the pack's unfinished trials
    except (Abandon, ApiError):
        raise
    except Exception as exc:
        log.exception("pack of %d trials failed", len(trials))
        msg = failure_message(exc)
        reporter.complete(
            [
                {**_ref(t), **repro, "status": "failed", "error": msg}
                for i, t in enumerate(trials)
                if i not in finished
            ]
        )
        return
    log.info("pack of %d trials trained in %.2fs", len(trials), time.monotonic() - started)
