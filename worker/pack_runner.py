"""The worker's fused path: a claimed pack trained at once, reported in batched calls.

One ``POST .../epochs`` per pack and epoch carries every trial's metrics; one
``POST .../complete`` carries the trials that leave the pack together (diverged,
canceled, pruned or done). A reporter thread sends them in order while training goes on:
the answers' ``lost``/``cancel``/``prune`` states are applied per trial as they arrive, and
act at the next epoch end. At the epochs the sweep's pruner judges (the claim's ``rungs``)
the pack waits for the answer, so a pruned trial leaves the pack at once; it ends as the
engine's ``canceled`` (its epochs kept) and is reported ``pruned``. The heartbeat thread
keeps every held lease alive.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

from gridsweep.claims import Claim
from gridsweep.client import ApiError
from gridsweep.vocab import TrialConfig
from worker.claiming import Stopping
from worker.fused import PackStopped
from worker.fused_packs import train_packs
from worker.leases import Abandon, PackHandle, failed, finite, outcome, repro_record
from worker.recall import TrainedKey
from worker.selection import Selection
from worker.train import EpochMetrics, TrialResult

log = logging.getLogger("gridsweep.worker")


def run_packs(h: PackHandle, claimed: list[Claim]) -> int:
    """Train ``claimed`` (held through ``h``) fused; return how many outcomes the API accepted.

    The API packs claims by the settings a pack must share already; grouping again here
    keeps every pack trainable whatever the API sent.
    """
    groups: dict[str, list[Claim]] = {}
    for c in claimed:
        shared = [c.params.get(k) for k in ("batch_size", "epochs", "optimizer", "loss")]
        key = [c.dataset, c.split, c.dataset_id, c.data_hash, shared]
        groups.setdefault(json.dumps(key, sort_keys=True), []).append(c)
    n = 0
    for cs in groups.values():
        if h.stopping.is_set():
            return n  # the rest are released by Worker.run
        reporter = Reporter(h)
        try:
            _run_group(h, cs, reporter)
        except Abandon:
            pass  # the worker is stopping: Worker.run releases the unfinished trials
        finally:
            n += reporter.close()
    return n


class Reporter:
    """Sends a pack's epoch reports and outcomes, in order, on a thread of its own."""

    def __init__(self, h: PackHandle) -> None:
        self.h = h
        self.items: queue.Queue[tuple[str, list[dict[str, Any]]] | None] = queue.Queue()
        self.accepted = 0
        self.error: BaseException | None = None
        self._answered: dict[int, threading.Event] = {}
        self.thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self.thread.start()

    def epochs(self, reports: list[dict[str, Any]]) -> threading.Event:
        """Queue an epoch report; the event is set once its answer is applied (or it failed)."""
        answered = threading.Event()
        if not reports:
            answered.set()
            return answered
        self._answered[id(reports)] = answered
        self._put("epochs", reports)
        return answered

    def wait(self, answered: threading.Event) -> None:
        """Wait for an answer (a rung), unless the worker stops; an unreachable API raises."""
        if isinstance(self.h.stopping, Stopping):  # set at once by the answer or by a stop
            with self.h.stopping.waking(answered):
                if not self.h.stopping.is_set():
                    answered.wait()
        else:
            while not answered.wait(0.05):
                if self.h.stopping.is_set() or self.error is not None or not self.thread.is_alive():
                    break
        if self.error is not None:
            raise self.error

    def release_oom(self, refs: list[dict[str, Any]], error: str) -> None:
        """Hand trials that do not fit this device back to be retried (the attempt counts)."""
        self._put("release_oom", [{**r, "error": error} for r in refs])

    def complete(self, outcomes: list[dict[str, Any]]) -> None:
        for o in outcomes:
            o.setdefault("device", self.h.device_name)
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
        h = self.h
        while (item := self.items.get()) is not None:
            kind, payload = item
            if self.error is not None:
                if (answered := self._answered.pop(id(payload), None)) is not None:
                    answered.set()  # nobody waits for an answer that will not come
                continue
            try:
                if kind == "epochs":
                    try:
                        h.held.apply(h.client.report_epochs(h.worker_id, payload))
                    finally:
                        answered = self._answered.pop(id(payload), None)
                        if answered is not None:
                            answered.set()
                    continue
                if kind == "release_oom":
                    for r in payload:  # one call each: every trial keeps its own error
                        ref = {"trial_id": r["trial_id"], "lease_token": r["lease_token"]}
                        h.client.release(h.worker_id, [ref], reason="out_of_memory", error=r["error"])
                        h.held.forget(r["trial_id"])
                    continue
                started = time.monotonic()
                states = h.client.complete(h.worker_id, payload)
                for o in payload:
                    h.held.forget(o["trial_id"])
                ok = sum(1 for o in payload if states.get(o["trial_id"]) == "ok")
                self.accepted += ok
                refused = [o["trial_id"] for o in payload if states.get(o["trial_id"]) != "ok"]
                log.info(
                    "%d trials reported (%.2fs)%s",
                    len(payload),
                    time.monotonic() - started,
                    f"; refused, the lease was lost: trials {refused}" if refused else "",
                )
            except BaseException as exc:
                self.error = exc


def _run_group(h: PackHandle, claimed: list[Claim], reporter: Reporter) -> None:
    head = claimed[0]
    try:
        data = h.data.get(*head.source)
        data_hash = h.data.info(*head.source).data_hash
    except Exception as exc:
        log.exception("loading %s failed", head.dataset)
        repro = repro_record(head, h.device_name, None)
        reporter.complete([failed(c, repro, exc) for c in claimed])
        return
    repro = repro_record(head, h.device_name, data_hash)  # the pack shares its data and split
    trials: list[Claim] = []
    cfgs: list[TrialConfig] = []
    selections: list[Selection] = []
    bad: list[dict[str, Any]] = []
    for c in claimed:
        try:
            cfg = TrialConfig.from_params(c.params, c.seed, data.task, data.n_classes)
            selections.append(Selection.from_claim(c, data.task))
            cfgs.append(cfg)
            trials.append(c)
        except Exception as exc:  # one bad trial fails alone
            bad.append(failed(c, repro, exc))
    reporter.complete(bad)
    finished: set[int] = set()
    rungs = {e for c in trials for e in c.rungs}

    def on_epoch(epoch: int, metrics: dict[int, EpochMetrics]) -> dict[int, str]:
        answered = reporter.epochs([{**trials[i].ref, **finite(m.to_dict())} for i, m in metrics.items()])
        if epoch in rungs:  # the pruner judges this epoch: its answer acts now, not an epoch later
            reporter.wait(answered)
        if h.stopping.is_set():
            raise Abandon
        verdicts = {i: h.held.verdict(trials[i].trial_id) for i in metrics}
        return {i: v for i, v in verdicts.items() if v is not None}

    def on_finish(results: dict[int, TrialResult]) -> None:
        outcomes = []
        for i, r in results.items():
            finished.add(i)
            c = trials[i]
            if r.status == "dropped":
                log.warning("trial %s: lease lost, dropping it", c.trial_id)
                h.held.forget(c.trial_id)
                continue
            if r.status == "out_of_memory":
                log.warning("trial %s: out of memory on %s, giving it back", c.trial_id, h.device)
                reporter.release_oom([c.ref], r.error or "out of memory")
                continue
            if h.recall is not None and c.role == "search":
                h.recall.remember(TrainedKey.of(c, cfgs[i], selections[i], data), r)
            o = outcome(c, repro, r)
            o["status"] = h.held.ended_as(c.trial_id, o["status"])
            outcomes.append(o)
        reporter.complete(outcomes)

    started = time.monotonic()

    def should_stop() -> bool:  # asked every step: a SIGTERM stops the pack at once
        return h.stopping.is_set()

    try:
        train_packs(
            cfgs,
            data,
            threads=h.pack_threads,
            on_epoch=on_epoch,
            on_finish=on_finish,
            allow_tf32=h.allow_tf32,
            should_stop=should_stop,
            selections=selections,
            keep_models=h.recall is not None,  # a search trial's model may serve its final trial
        )
    except PackStopped:
        raise Abandon from None  # Worker.run releases the pack's unfinished trials
    except (Abandon, ApiError):
        raise
    except Exception as exc:
        log.exception("pack of %d trials failed", len(trials))
        reporter.complete([failed(c, repro, exc) for i, c in enumerate(trials) if i not in finished])
        return
    log.info("pack of %d trials trained in %.2fs", len(trials), time.monotonic() - started)
