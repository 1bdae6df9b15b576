"""Training a claimed pack: sub-packs sized to memory, out-of-memory retries, CPU threads.

``train_packs`` trains a claimed pack, ``train_one`` a trial claimed alone: both in the
fused engine, on a CPU always with one torch thread per part, so every trial the worker
trains gets the numbers it would get in any pack (see worker/fused.py, Reproducibility).

Pure: torch + worker.fused/packing; no database or HTTP.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from gridsweep.vocab import TrialConfig, resolve_loss
from worker.fused import OnEpoch, OnFinish, PackStopped, train_pack
from worker.packing import memory_budget, split_for_memory, split_for_threads
from worker.selection import LAST, Selection
from worker.tensors import TensorSplit
from worker.train import EpochMetrics, TrialResult, n_outputs_for


def is_out_of_memory(exc: BaseException) -> bool:
    if torch.cuda.is_available() and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def train_packs(
    cfgs: Sequence[TrialConfig],
    data: TensorSplit,
    *,
    threads: int = 1,
    budget: int | None = None,
    on_epoch: OnEpoch | None = None,
    on_finish: OnFinish | None = None,
    selections: Sequence[Selection] | None = None,
    **kw: Any,
) -> list[TrialResult]:
    """Train ``cfgs`` (one claimed pack) with ``train_pack``; results in the order of ``cfgs``.

    ``selections``: one per config (``train_pack``), dealt to the parts with their trials.

    * On a CPU with ``threads > 1`` the pack is cut into ``threads`` interleaved parts
      (every architecture evenly spread), each trained by a thread of its own with one
      torch thread: the parts run side by side with no OpenMP barrier between them, which
      scales better than one pack on all cores and degrades far less on a shared machine.
      The callbacks are then called from those threads (a part's trials at a time). A CPU
      pack of one part trains on one torch thread too (``one_torch_thread``): how a kernel
      splits its work among threads changes its rounding, so a trial's numbers would
      otherwise depend on the worker's thread count and on the part it landed in.
    * Sub-packs fit the device's memory (``budget`` bytes; default half of what is free).
      When one still runs out of memory, its trials that have not finished are split in
      two and trained again from scratch (their epochs are reported again: the API keeps
      the first report of each epoch); a single trial that does not fit ends ``out_of_memory``
      (the worker hands it back to be retried, as the one-by-one path does).
    """
    if not cfgs:
        return []
    sels = list(selections) if selections is not None else [LAST] * len(cfgs)
    if len(sels) != len(cfgs):
        raise ValueError(f"{len(sels)} selections for {len(cfgs)} trials")
    kw = {**kw, "selections": sels}
    with one_torch_thread(data.device):
        if threads > 1 and data.device.type == "cpu" and len(cfgs) > 1:
            return _in_threads(cfgs, data, threads, budget, on_epoch, on_finish, kw)
        return _in_memory(cfgs, data, budget, on_epoch, on_finish, kw)


@contextlib.contextmanager
def one_torch_thread(device: torch.device) -> Iterator[None]:
    """On a CPU: one torch (and MKL) thread while the block runs, process-wide, restored after.
    Threads started inside take the setting (torch applies it lazily in each new thread)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_one(
    cfg: TrialConfig,
    data: TensorSplit,
    *,
    on_epoch: Callable[[EpochMetrics], bool | None] | None = None,
    evaluate_test: bool = False,
    train_on_validation: bool = False,
    should_stop: Callable[[], bool] | None = None,
    allow_tf32: bool = False,
    selection: Selection = LAST,
) -> TrialResult:
    """One trial in the fused engine, as a pack of one, with ``worker.train.train_trial``'s
    interface and outcomes (``on_epoch`` returning True cancels; ``should_stop`` ends it
    ``stopped``; the model is kept). The worker trains a trial claimed alone (``--pack-size 1``,
    final and refit trials, a rerun) this way, so its numbers are bit for bit those it gets in
    any pack; ``train_trial`` stays the reference the engine is tested against (round-off).
    ``selection``: its epoch and early stopping (``worker.selection``)."""

    def pack_epoch(epoch: int, ms: dict[int, EpochMetrics]) -> dict[int, str]:
        return {0: "cancel"} if on_epoch is not None and 0 in ms and on_epoch(ms[0]) is True else {}

    try:
        with one_torch_thread(data.device):
            (result,) = train_pack(
                [cfg],
                data,
                on_epoch=pack_epoch,
                evaluate_test=evaluate_test,
                train_on_validation=train_on_validation,
                keep_models=True,
                allow_tf32=allow_tf32,
                should_stop=should_stop,
                selections=[selection],
            )
    except PackStopped:
        return TrialResult(status="stopped")
    return result


def _remap(
    part: list[int], on_epoch: OnEpoch | None, on_finish: OnFinish | None, results: dict[int, TrialResult]
) -> tuple[OnEpoch, OnFinish]:
    """Callbacks of a part (positions ``0..len(part)``) that speak the caller's positions."""

    def part_epoch(epoch: int, ms: dict[int, EpochMetrics]) -> Mapping[int, str]:
        if on_epoch is None:
            return {}
        answer = on_epoch(epoch, {part[j]: m for j, m in ms.items()}) or {}
        back = {i: j for j, i in enumerate(part)}
        return {back[i]: d for i, d in answer.items()}

    def part_finish(done: dict[int, TrialResult]) -> None:
        mapped = {part[j]: r for j, r in done.items()}
        results.update(mapped)
        if on_finish is not None:
            on_finish(mapped)

    return part_epoch, part_finish


def _part_kw(kw: dict[str, Any], part: list[int]) -> dict[str, Any]:
    """``train_pack``'s keywords for the trials ``part`` (their own selections)."""
    return {**kw, "selections": [kw["selections"][i] for i in part]}


def _in_threads(
    cfgs: Sequence[TrialConfig],
    data: TensorSplit,
    threads: int,
    budget: int | None,
    on_epoch: OnEpoch | None,
    on_finish: OnFinish | None,
    kw: dict[str, Any],
) -> list[TrialResult]:
    loss = resolve_loss(cfgs[0].loss, data.task, data.n_classes)
    parts = split_for_threads(cfgs, threads, data.n_features, n_outputs_for(loss, data.n_classes))
    results: dict[int, TrialResult] = {}
    errors: list[BaseException] = []
    share = None if budget is None else budget // len(parts)

    def run(part: list[int]) -> None:
        try:
            ep, fin = _remap(part, on_epoch, on_finish, results)
            _in_memory([cfgs[i] for i in part], data, share, ep, fin, _part_kw(kw, part))
        except BaseException as exc:
            errors.append(exc)

    # One torch thread each (``train_packs`` set it process-wide before these threads start).
    workers = [threading.Thread(target=run, args=(p,), name=f"pack-{j}") for j, p in enumerate(parts)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(cfgs))]


def _in_memory(
    cfgs: Sequence[TrialConfig],
    data: TensorSplit,
    budget: int | None,
    on_epoch: OnEpoch | None,
    on_finish: OnFinish | None,
    kw: dict[str, Any],
) -> list[TrialResult]:
    loss = resolve_loss(cfgs[0].loss, data.task, data.n_classes)
    n_out = n_outputs_for(loss, data.n_classes)
    if budget is None:
        budget = memory_budget(data.device)
    itemsize = torch.empty((), dtype=data.dtype).element_size()
    queue = split_for_memory(cfgs, data.n_features, n_out, budget, itemsize)
    results: dict[int, TrialResult] = {}
    while queue:
        part = queue.pop(0)
        part_epoch, part_finish = _remap(part, on_epoch, on_finish, results)
        try:
            sub = [cfgs[i] for i in part]
            train_pack(sub, data, on_epoch=part_epoch, on_finish=part_finish, **_part_kw(kw, part))
        except Exception as exc:
            rest = [i for i in part if i not in results]
            if not is_out_of_memory(exc):
                raise
            if data.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(rest) == 1:  # one trial alone does not fit: it leaves, the others go on
                _, finish_rest = _remap(rest, on_epoch, on_finish, results)
                finish_rest({0: TrialResult(status="out_of_memory", error=f"out of memory: {exc}"[:2000])})
                continue
            half = len(rest) // 2
            queue[:0] = [rest[:half], rest[half:]]
    return [results[i] for i in range(len(cfgs))]
