"""The worker's claim loop: register, claim, train, report, complete.

The worker speaks HTTP to the API only. A heartbeat thread keeps the leases of
the trials in hand alive; every report is fenced by the lease token, and the
answer may say ``cancel`` (stop the trial), ``prune`` (stop it: it ends ``pruned``) or
``lost`` (drop it, write nothing).
SIGTERM / SIGINT: training stops within one step, the trials go back to the queue at once.
An idle worker waits at the API for work (a long-poll claim, ``worker.claiming``): it is handed
a trial the moment one is queued, and a stop does not wait for the claim. On its way out it
signs off (not counted idle by the API's fair share; anything it still held is requeued).
``idle_exit_seconds``: once no trial has been claimable for that long, the loop ends (nothing
is held then): a batch job or a scaled-out pod ends when the queue stays empty.
An API or database outage does not stop training: epoch reports are buffered and sent
again with the next one; the outcome waits (with backoff) until the API is back.
Out of memory gives the trial back to be retried (the attempt counts); an exception in
training ends it ``failed`` (not retried); a NaN loss ends it ``diverged``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from gridsweep import logs
from gridsweep.claims import Claim
from gridsweep.client import ApiClient, ApiError
from gridsweep.vocab import TrialConfig
from worker import claiming
from worker.data import DataCache
from worker.fused_packs import train_one
from worker.handback import model_files, upload_model
from worker.leases import Abandon, Held, PackHandle, TrialLost, failed, finite, outcome, repro_record
from worker.pack_runner import run_packs
from worker.packing import auto_pack_size, parse_pack_size
from worker.recall import RECALL_BYTES, Recall, TrainedKey, as_final, reusable
from worker.selection import Selection
from worker.tensors import select_device
from worker.train import EpochMetrics
from worker.uploaded import UploadedDatasets

log = logging.getLogger("gridsweep.worker")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA or host allocation failure (retried elsewhere), as opposed to a bug in training."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


class Worker:
    def __init__(
        self,
        server: str,
        *,
        device: str = "auto",
        name: str | None = None,
        token: str | None = None,
        pack_size: int | str | None = 1,
        poll_seconds: float = 1.0,
        threads: int | None = None,
        pack_threads: int | None = None,
        exit_when: Callable[[], bool] | None = None,
        idle_exit_seconds: float | None = None,
        cache_dir: str | None = None,
        allow_tf32: bool = False,
        recall_bytes: int = RECALL_BYTES,
    ) -> None:
        self.stopping = claiming.Stopping()  # setting it also wakes a waiting claim
        # Both clients stop retrying through an outage as soon as the worker is stopping.
        self.client = ApiClient(server, token=token, interrupt=self.stopping)
        # Its own connection (used from another thread).
        self.hb_client = ApiClient(server, token=token, interrupt=self.stopping)
        self.device = select_device(device)
        self.device_name = describe_device(self.device)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        # 1: one trial at a time (the fused engine as a pack of one); more: fused packs; None/"auto":
        # by device. Either way a trial gets the same numbers (worker/fused.py, Reproducibility).
        self.pack_size = parse_pack_size(pack_size) or auto_pack_size(self.device.type)
        self.allow_tf32 = allow_tf32
        self.poll_seconds = poll_seconds  # between empty claims of an API without the long poll
        self.claim_wait_seconds = claiming.CLAIM_WAIT_SECONDS
        self.exit_when = exit_when
        self.idle_exit_seconds = idle_exit_seconds
        self.uploads = UploadedDatasets(self.client, cache_dir)
        self.data = DataCache(self.device, fetch=self.uploads.get)
        self.held = Held()
        # Search trials' results kept so that their final trial needs no retrain (0: none kept).
        self.recall = Recall(recall_bytes) if recall_bytes > 0 else None
        self.pending: list[dict[str, Any]] = []  # epoch reports the API has not taken yet
        self.heartbeat_seconds = 10.0
        self.worker_id = ""
        if threads:
            torch.set_num_threads(threads)
        # CPU packs: one part per thread, each with one torch thread (default: as many as torch has);
        # a trial trained alone runs on one torch thread too (worker.fused_packs.one_torch_thread).
        self.pack_threads = pack_threads or torch.get_num_threads()

    # --- lifecycle -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def _stop(signum: int, _frame: Any) -> None:
            if self.stopping.is_set():
                if signum == signal.SIGINT:  # a second Ctrl-C: leave now
                    raise KeyboardInterrupt
                return  # SIGTERM again (a batch script's trap and the scheduler both send one)
            log.info("signal %s: stopping the current trial and releasing trials", signum)
            self.stopping.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self) -> int:
        """Claim and train until stopped, until ``exit_when`` says so while idle, or until no
        trial has been claimable for ``idle_exit_seconds``."""
        info = self.client.register(self.name, socket.gethostname(), self.device_name)
        self.worker_id = info["id"]
        logs.set_fields(worker_id=self.worker_id)  # on this thread's log lines (and the heartbeat's)
        self.heartbeat_seconds = float(info.get("heartbeat_seconds") or self.heartbeat_seconds)
        log.info("worker %s registered as %s on %s", self.name, self.worker_id, self.device_name)
        # The heartbeat outlives a stop request: a trial still on its way to its next step (data
        # loading, a first call's warm-up) keeps its lease until the release below hands it back.
        released = threading.Event()
        hb = threading.Thread(target=self._heartbeat_loop, args=(released,), name="heartbeat", daemon=True)
        hb.start()
        done = 0
        idle = wait = 0.0  # wait: how long the next claim may wait at the API for work
        idle_since: float | None = None  # when the queue was first found empty (monotonic)
        try:
            while not self.stopping.is_set():
                try:
                    answer = claiming.claim(self.client, self.stopping, self.worker_id, self.pack_size, wait)
                    if answer is None:
                        break  # stopping while the claim waited
                    claimed = [Claim.from_json(t) for t in answer["trials"]]
                except ApiError as exc:
                    if exc.status_code != 503 or self.stopping.is_set():
                        raise
                    log.warning("claim failed, the API is unavailable; trying again: %s", exc)
                    continue
                if not claimed:
                    if idle_since is None:
                        idle_since = time.monotonic()
                    if self.exit_when is not None and self.exit_when():
                        break
                    idle_for = time.monotonic() - idle_since
                    if self.idle_exit_seconds is not None and idle_for >= self.idle_exit_seconds:
                        log.info("no trial to claim for %.1fs: exiting", idle_for)
                        break
                    if "max_wait_seconds" in answer:  # wait at the API: handed the next trial at once
                        wait = min(self.claim_wait_seconds, float(answer["max_wait_seconds"]))
                        if self.idle_exit_seconds is not None:
                            wait = min(wait, self.idle_exit_seconds - idle_for)
                        continue
                    # An API without the long poll: poll quickly right after work, slower later.
                    idle = min(self.poll_seconds, idle + 0.05) if idle else 0.05
                    self.stopping.wait(idle)
                    continue
                idle, wait, idle_since = 0.0, 0.0, None
                done += self.run_claimed(claimed)
                logs.set_fields(sweep_id=None, trial_id=None)
        except ApiError:
            if not self.stopping.is_set():
                raise  # stopping: an unreachable API only means the release below may not land
        finally:
            self._release_all()
            self.stopping.set()
            released.set()
            self._sign_off()
            hb.join(timeout=2)
            self.client.close()
            self.hb_client.close()
        return done

    def _heartbeat_loop(self, released: threading.Event) -> None:
        logs.set_fields(worker_id=self.worker_id)
        while not released.wait(self.heartbeat_seconds):
            refs = self.held.as_refs()
            if not refs:
                continue
            try:
                self.held.apply(self.hb_client.heartbeat(self.worker_id, refs))
            except ApiError as exc:  # the API is down: training goes on, the next beat retries
                log.warning("heartbeat failed: %s", exc)

    def _release_all(self) -> None:
        refs = self.held.as_refs()
        self.pending.clear()  # reports of released attempts: the API drops those rows anyway
        if refs:
            try:
                states = self.client.release(self.worker_id, refs)
                ok = sum(1 for st in states.values() if st == "ok")
                # The others' leases had expired (and been requeued by the reaper) already.
                log.info("released %d trials (%d already requeued)", ok, len(refs) - ok)
            except ApiError as exc:
                log.warning("release failed (the reaper will requeue them): %s", exc)
            with self.held.lock:
                self.held.leases.clear()

    def _sign_off(self) -> None:
        """Tell the API this worker is gone: its fair share stops counting it, and a claim answered
        while it stopped is requeued at once rather than when its lease expires."""
        if not self.worker_id:
            return
        try:
            if n := len(self.client.sign_off(self.worker_id)):
                log.info("signed off; %d trials claimed while stopping were requeued", n)
        except ApiError as exc:  # an older API (404) or an unreachable one: the reaper requeues
            log.debug("sign-off failed: %s", exc)

    # --- one claim -------------------------------------------------------------------

    def run_claimed(self, claimed: list[Claim]) -> int:
        """Train what one claim brought; return how many outcomes the API accepted.

        Final trials (test evaluation, refit) are trained one by one (``run_one``: the engine
        as a pack of one, which uploads their models): there are few of them, and a trial's
        numbers are the same in a pack of one as in any pack.
        """
        self.held.take(claimed)
        singles = claimed
        n = 0
        if self.pack_size > 1:
            singles = [c for c in claimed if c.evaluate_test or c.refit]
            n += run_packs(self.pack_handle(), [c for c in claimed if c not in singles])
        for c in singles:
            if self.stopping.is_set():
                break  # the rest are released by run()
            n += self.run_one(c)
        return n

    def pack_handle(self) -> PackHandle:
        """What the fused path gets of this worker (not the worker itself)."""
        return PackHandle(
            client=self.client,
            worker_id=self.worker_id,
            held=self.held,
            stopping=self.stopping,
            data=self.data,
            device=self.device,
            device_name=self.device_name,
            pack_threads=self.pack_threads,
            allow_tf32=self.allow_tf32,
            recall=self.recall,
        )

    def _flush(self, retry_for: float | None = None) -> None:
        """Send the buffered epoch reports; while the API is unavailable keep them for later."""
        if not self.pending:
            return
        batch = list(self.pending)
        try:
            states = self.client.report_epochs(self.worker_id, batch, retry_for=retry_for)
        except ApiError as exc:
            if exc.status_code != 503 or retry_for is None:
                raise
            log.warning("API unavailable, %d epoch reports kept for later: %s", len(batch), exc)
            return
        del self.pending[: len(batch)]
        self.held.apply(states)

    def _drop(self, trial_id: int) -> None:
        self.pending[:] = [r for r in self.pending if r["trial_id"] != trial_id]
        self.held.forget(trial_id)

    def _give_back_oom(self, c: Claim, exc: BaseException) -> None:
        """Out of memory: hand the trial back to be retried (on a worker with room, or smaller)."""
        tid = c.trial_id
        log.warning("trial %s: out of memory on %s, giving it back to be retried: %s", tid, self.device, exc)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._drop(tid)
        try:
            self.client.release(self.worker_id, [c.ref], reason="out_of_memory", error=f"{exc}"[:2000])
        except ApiError as err:  # the lease expires and the reaper requeues it instead
            log.warning("trial %s: release failed: %s", tid, err)

    def run_one(self, c: Claim) -> int:
        """Train one claimed trial on the reference path; 1 if the API took its outcome."""
        tid = c.trial_id
        logs.set_fields(sweep_id=c.sweep_id, trial_id=tid)  # on this trial's log lines

        def on_epoch(m: EpochMetrics) -> bool:
            self.pending.append({**c.ref, **finite(m.to_dict())})
            # A short budget: through an outage the reports wait and training goes on.
            self._flush(retry_for=self.heartbeat_seconds)
            if tid in self.held.lost:
                raise TrialLost
            return self.held.stop(tid)  # canceled, or pruned at this rung

        def should_stop() -> bool:  # asked every step: stop at once when stopping or the lease is gone
            return self.stopping.is_set() or tid in self.held.lost

        repro = repro_record(c, self.device_name, None)
        try:
            data = self.data.get(*c.source)
            info = self.data.info(*c.source)
            repro = repro_record(c, self.device_name, info.data_hash)
            cfg = TrialConfig.from_params(c.params, c.seed, data.task, data.n_classes)
            selection = Selection.from_claim(c, data.task)
            key = TrainedKey.of(c, cfg, selection, data)
            held = self.recall.get(key) if self.recall is not None and reusable(c) else None
            if held is not None:  # this worker trained it: the same numbers a retrain would give
                result = as_final(held, cfg, data)
                # Its curve, sent with the outcome's flush below (one request, not one per epoch).
                self.pending.extend({**c.ref, **finite(m.to_dict())} for m in result.epochs)
                log.info("trial %s: its search trial's training reused, scored on the test split", tid)
            else:  # the fused engine as a pack of one: the numbers this trial gets in any pack
                result = train_one(
                    cfg,
                    data,
                    on_epoch=on_epoch,
                    evaluate_test=c.evaluate_test,
                    train_on_validation=c.refit,
                    should_stop=should_stop,
                    allow_tf32=self.allow_tf32,
                    selection=selection,
                )
                if self.recall is not None and c.role == "search":
                    self.recall.remember(key, result)
            if result.status == "stopped":
                raise TrialLost if tid in self.held.lost else Abandon
            if c.upload_model and result.status == "succeeded" and result.model is not None:
                try:  # before `complete`, while the lease still fences the write
                    upload_model(self.client, self.worker_id, c, model_files(c, cfg, data, info, result))
                except ApiError as exc:
                    if exc.status_code == 409:
                        raise TrialLost from exc
                    raise
            report = outcome(c, repro, result)
            report["status"] = self.held.ended_as(tid, report["status"])
        except TrialLost:
            log.warning("trial %s: lease lost, dropping it", tid)
            self._drop(tid)
            return 0
        except Abandon:
            return 0  # still held: released by run()
        except Exception as exc:
            if isinstance(exc, ApiError) and exc.status_code == 503:
                raise  # the API is away (or we are stopping): not the trial's fault
            if is_out_of_memory(exc):
                self._give_back_oom(c, exc)
                return 0
            log.exception("trial %s failed", tid)
            report = failed(c, repro, exc)
        started = time.monotonic()
        self._flush()  # the curve first (full retry budget), then the outcome
        states = self.client.complete(self.worker_id, [report])
        recorded = states.get(tid) == "ok"
        log.info(
            "trial %s %s: %s (%.2fs to report)",
            tid,
            report["status"],
            "recorded" if recorded else "refused, the lease was lost",
            time.monotonic() - started,
        )
        self.held.forget(tid)
        return 1 if recorded else 0
