"""The worker's fused path: a claimed pack trained at once, reported in batched calls.

One ``POST .../epochs`` per pack and epoch carries every trial's metrics; one
``POST .../complete`` carries the trials that leave the pack together (diverged,
canceled, or done). The answers' ``lost``/``cancel`` states are applied per trial;
the heartbeat thread keeps every held lease alive meanwhile.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

from worker.config import TrialConfig
from worker.fused import train_packs
from worker.train import EpochMetrics, TrialResult

if TYPE_CHECKING:
    from worker.loop import Worker

log = logging.getLogger("gridsweep.worker")


def failure_message(exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(exc)[-3:])
    return f"{type(exc).__name__}: {exc}\n{tb}"[:20_000]


def run_pack(w: Worker, claimed: list[dict[str, Any]]) -> int:
    """Train ``claimed`` (held by ``w``) fused; return how many outcomes the API accepted.

    Final trials (test evaluation, refit) take the reference path one by one: there
    are few of them and their test metrics then match ``--pack-size 1`` exactly.
    """
    singles = [c for c in claimed if c["evaluate_test"] or c["refit"]]
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in claimed:
        if not (c["evaluate_test"] or c["refit"]):
            groups.setdefault(json.dumps([c["dataset"], c["split"]], sort_keys=True), []).append(c)
    n = 0
    for cs in groups.values():
        if w.stopping.is_set():
            return n  # the rest are released by Worker.run
        n += _run_group(w, cs)
    for c in singles:
        if w.stopping.is_set():
            break
        n += w.run_one(c)
    return n


def _ref(c: dict[str, Any]) -> dict[str, Any]:
    return {"trial_id": c["trial_id"], "lease_token": c["lease_token"]}


def _run_group(w: Worker, claimed: list[dict[str, Any]]) -> int:
    from worker.loop import Abandon, _finite  # the loop module imports this one

    accepted = 0
    failed: list[dict[str, Any]] = []
    try:
        data = w.data.get(claimed[0]["dataset"], claimed[0]["split"])
    except Exception as exc:
        log.exception("loading %s failed", claimed[0]["dataset"])
        return _complete(w, [{**_ref(c), "status": "failed", "error": failure_message(exc)} for c in claimed])
    trials: list[dict[str, Any]] = []
    cfgs: list[TrialConfig] = []
    for c in claimed:
        try:
            cfgs.append(TrialConfig.from_params(c["params"], c["seed"], data.task, data.n_classes))
            trials.append(c)
        except Exception as exc:  # one bad trial fails alone
            failed.append({**_ref(c), "status": "failed", "error": failure_message(exc)})
    if failed:
        accepted += _complete(w, failed)
    finished: set[int] = set()

    def on_epoch(epoch: int, metrics: dict[int, EpochMetrics]) -> dict[int, str]:
        reports = [{**_ref(trials[i]), **_finite(m.to_dict())} for i, m in metrics.items()]
        w.held.apply(w.client.report_epochs(w.worker_id, reports))
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
        nonlocal accepted
        outcomes = []
        for i, r in results.items():
            finished.add(i)
            if r.status == "dropped":
                log.warning("trial %s: lease lost, dropping it", trials[i]["trial_id"])
                w._forget(trials[i]["trial_id"])
                continue
            outcomes.append(
                {
                    **_ref(trials[i]),
                    "device": w.device_name,
                    "status": r.status,
                    "metrics": _finite({**r.metrics, **(r.test_metrics or {})}),
                    "epochs_done": len(r.epochs),
                    "error": r.error,
                    "duration_seconds": r.duration_seconds,
                }
            )
        accepted += _complete(w, outcomes)

    started = time.monotonic()
    try:
        train_packs(cfgs, data, on_epoch=on_epoch, on_finish=on_finish, allow_tf32=w.allow_tf32)
    except Abandon:
        return accepted  # unfinished trials are still held: Worker.run releases them
    except Exception as exc:
        log.exception("pack of %d trials failed", len(trials))
        msg = failure_message(exc)
        rest = [
            {**_ref(t), "status": "failed", "error": msg} for i, t in enumerate(trials) if i not in finished
        ]
        accepted += _complete(w, rest)
        return accepted
    log.info("pack of %d trials done in %.2fs", len(trials), time.monotonic() - started)
    return accepted


def _complete(w: Worker, outcomes: list[dict[str, Any]]) -> int:
    """Report ``outcomes`` in one call; forget their trials; count those accepted."""
    if not outcomes:
        return 0
    for o in outcomes:
        o.setdefault("device", w.device_name)
    states = w.client.complete(w.worker_id, outcomes)
    for o in outcomes:
        w._forget(o["trial_id"])
    return sum(1 for o in outcomes if states.get(o["trial_id"]) == "ok")
