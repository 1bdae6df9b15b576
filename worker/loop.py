"""The worker's claim loop: register, claim, train, report, complete.

The worker speaks HTTP to the API only. A heartbeat thread keeps the leases of
the trials in hand alive; every report is fenced by the lease token, and the
answer may say ``cancel`` (stop the trial) or ``lost`` (drop it, write nothing).
SIGTERM / SIGINT: the current epoch ends, the trials go back to the queue at once.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from worker.client import ApiClient, ApiError
from worker.config import TrialConfig
from worker.data import DataCache
from worker.pack_runner import run_pack
from worker.packing import auto_pack_size, parse_pack_size
from worker.train import EpochMetrics, select_device, train_trial

log = logging.getLogger("gridsweep.worker")


class TrialLost(Exception):
    """The lease is gone (expired and reclaimed): drop the trial, write nothing."""


class Abandon(Exception):
    """The worker is stopping: give the trial back to the queue."""


@dataclass
class Held:
    """Trials in hand, shared with the heartbeat thread."""

    leases: dict[int, str] = field(default_factory=dict)
    lost: set[int] = field(default_factory=set)
    cancel: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def as_refs(self) -> list[dict[str, Any]]:
        with self.lock:
            return [{"trial_id": t, "lease_token": tok} for t, tok in self.leases.items()]

    def apply(self, states: dict[int, str]) -> None:
        with self.lock:
            for tid, st in states.items():
                if st == "lost":
                    self.lost.add(tid)
                elif st == "cancel":
                    self.cancel.add(tid)


def _finite(metrics: dict[str, Any]) -> dict[str, float | None]:
    """JSON has no NaN: a non-finite metric is sent as missing."""
    return {k: (float(v) if v is not None and math.isfinite(v) else None) for k, v in metrics.items()}


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
        exit_when: Callable[[], bool] | None = None,
        allow_tf32: bool = False,
    ) -> None:
        self.client = ApiClient(server, token=token)
        self.hb_client = ApiClient(server, token=token)  # its own connection: used from another thread
        self.device = select_device(device)
        self.device_name = describe_device(self.device)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        # 1: the reference path, one trial at a time; more: fused packs; None/"auto": by device.
        self.pack_size = parse_pack_size(pack_size) or auto_pack_size(self.device.type)
        self.allow_tf32 = allow_tf32
        self.poll_seconds = poll_seconds
        self.exit_when = exit_when
        self.data = DataCache(self.device)
        self.held = Held()
        self.stopping = threading.Event()
        self.heartbeat_seconds = 10.0
        self.worker_id = ""
        if threads:
            torch.set_num_threads(threads)
        self.pack_threads = torch.get_num_threads()  # CPU packs: one part per thread

    # --- lifecycle -------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def _stop(signum: int, _frame: Any) -> None:
            if self.stopping.is_set():  # a second Ctrl-C: leave now
                raise KeyboardInterrupt
            log.info("signal %s: finishing the current epoch and releasing trials", signum)
            self.stopping.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self) -> int:
        """Claim and train until stopped (or until ``exit_when`` says so while idle)."""
        info = self.client.register(self.name, socket.gethostname(), self.device_name)
        self.worker_id = info["id"]
        self.heartbeat_seconds = float(info.get("heartbeat_seconds") or self.heartbeat_seconds)
        log.info("worker %s registered as %s on %s", self.name, self.worker_id, self.device_name)
        hb = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        hb.start()
        done = 0
        idle = 0.0
        try:
            while not self.stopping.is_set():
                claimed = self.client.claim(self.worker_id, self.pack_size)["trials"]
                if not claimed:
                    if self.exit_when is not None and self.exit_when():
                        break
                    # Poll quickly right after work, slower when the queue stays empty.
                    idle = min(self.poll_seconds, idle + 0.05) if idle else 0.05
                    self.stopping.wait(idle)
                    continue
                idle = 0.0
                done += self.run_claimed(claimed)
        finally:
            self._release_all()
            self.stopping.set()
            hb.join(timeout=2)
            self.client.close()
            self.hb_client.close()
        return done

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.heartbeat_seconds):
            refs = self.held.as_refs()
            if not refs:
                continue
            try:
                self.held.apply(self.hb_client.heartbeat(self.worker_id, refs))
            except ApiError as exc:  # the API is down: training goes on, the next beat retries
                log.warning("heartbeat failed: %s", exc)

    def _release_all(self) -> None:
        refs = self.held.as_refs()
        if refs:
            try:
                self.client.release(self.worker_id, refs)
                log.info("released %d trials", len(refs))
            except ApiError as exc:
                log.warning("release failed (the reaper will requeue them): %s", exc)
            with self.held.lock:
                self.held.leases.clear()

    # --- one claim -------------------------------------------------------------------

    def run_claimed(self, claimed: list[dict[str, Any]]) -> int:
        with self.held.lock:
            for c in claimed:
                self.held.leases[c["trial_id"]] = c["lease_token"]
        if self.pack_size > 1:
            return run_pack(self, claimed)
        n = 0
        for c in claimed:
            if self.stopping.is_set():
                break  # the rest are released by run()
            n += self.run_one(c)
        return n

    def _forget(self, trial_id: int) -> None:
        with self.held.lock:
            self.held.leases.pop(trial_id, None)
            self.held.lost.discard(trial_id)
            self.held.cancel.discard(trial_id)

    def run_one(self, c: dict[str, Any]) -> int:
        tid, token = c["trial_id"], c["lease_token"]
        ref = {"trial_id": tid, "lease_token": token}

        def on_epoch(m: EpochMetrics) -> bool:
            states = self.client.report_epochs(self.worker_id, [{**ref, **_finite(m.to_dict())}])
            self.held.apply(states)
            if tid in self.held.lost:
                raise TrialLost
            if self.stopping.is_set():
                raise Abandon
            return tid in self.held.cancel

        outcome: dict[str, Any] = {**ref, "device": self.device_name}
        try:
            data = self.data.get(c["dataset"], c["split"])
            cfg = TrialConfig.from_params(c["params"], c["seed"], data.task, data.n_classes)
            result = train_trial(
                cfg, data, on_epoch=on_epoch, evaluate_test=c["evaluate_test"], train_on_validation=c["refit"]
            )
            outcome.update(
                status=result.status,
                metrics=_finite({**result.metrics, **(result.test_metrics or {})}),
                epochs_done=len(result.epochs),
                error=result.error,
                duration_seconds=result.duration_seconds,
            )
        except TrialLost:
            log.warning("trial %s: lease lost, dropping it", tid)
            self._forget(tid)
            return 0
        except Abandon:
            return 0  # still held: released by run()
        except Exception as exc:
            log.exception("trial %s failed", tid)
            tb = "".join(traceback.format_exception(exc)[-3:])
            outcome.update(status="failed", error=f"{type(exc).__name__}: {exc}\n{tb}"[:20_000])
        started = time.monotonic()
        states = self.client.complete(self.worker_id, [outcome])
        log.info("trial %s %s (%.2fs to report)", tid, outcome["status"], time.monotonic() - started)
        self._forget(tid)
        return 1 if states.get(tid) == "ok" else 0
