"""Fused training: the trials of a pack trained at once, as stacked MLPs.

Pure: torch + gridsweep.vocab/train/packing; no database or HTTP.

A *block* holds trials of one activation with their weights stacked per layer
(``W [K, in, out]``, ``b [K, 1, out]``) and runs them with batched matmuls. A pack
is one or more blocks trained in lockstep: every trial sees the same minibatch,
one backward pass runs over the sum of the per-trial losses (trials share no
parameter, so each gets exactly its own gradient) and one optimizer step updates
every stacked tensor, with per-trial learning rate and weight decay as
``[K, 1, 1]`` tensors. Small steps cost mostly Python and dispatch time, which
this pays once per pack instead of once per trial.

Exactness (what makes a packed trial the same function as ``train_trial``):

* Init: each trial draws from its own generator, in the reference order, at its
  TRUE fan-in; padded entries are zero.
* Batches: ``epoch_permutation(split_seed, epoch)``, the same for every trial.
* Dropout: each trial's masks come from its own generator, drawn at its true width
  and only in its true layers, in forward order (``BlockDropout``).
* Optimizer: Adam/AdamW on a CPU run torch.optim's fused kernel on each trial's own
  tensors, as ``torch.optim.Adam(fused=True)`` does; SGD (and CUDA) the elementwise ops of
  torch.optim's ``foreach=False`` path in the same order, with per-trial scalars as tensors
  in forms that round the same (worker/fused_opt.py): the update itself is bitwise torch.optim's.
* Only the matmul summation order (bmm vs mm), loss reductions, padding (below) and, on a
  CPU but an Intel one with AVX-512 kernels, tanh (computed as ``2 sigmoid(2x) - 1``, ~3x
  faster there; ``SigmoidTanh``) may differ: float64 agrees to ~1e-12, float32 to round-off.

Reproducibility (what makes a trial's numbers the same in ANY pack, bit for bit: every
epoch's metrics and the final weights depend on its config, seed, data, split, versions and
device type, not on the other trials, K, the block or the CPU part it lands in):

* Shapes: a trial computes at its own canonical shapes. Hidden widths are padded to a
  multiple of 32 (``worker.packing.canonical_width``, a function of the trial) and the
  worker's planning modes (``auto``, ``group``) only stack trials that compute at their own
  canonical shapes; ``pad``/``pad_all`` pad further and are not reproducible (benchmarks).
* Elementwise kernels: a CPU kernel runs SIMD steps of 2 vectors and finishes the last
  ``numel % step`` elements of the whole [K, ...] tensor with scalar code, whose exp/log/erf
  round differently (the step is 32 float32 with AVX-512, 16 with AVX2). Each trial's slab is
  whole steps: activations by the widths, per-row losses by rows padded to 32
  (``pack_losses``), so no trial's element ever lands in a scalar tail.
* Matmuls: each batch item of ``bmm``/``baddbmm`` is computed alike for any K, except a
  matrix-vector product with K = 1 (another BLAS kernel): the one-unit output layer uses
  broadcast multiplies and row/column sums instead (``SingleOutput``).
* Reductions: per trial, over its own rows or units (the same lengths in any pack);
  validation is summed over chunks whose rows depend on the width only (``evaluate_block``);
  every loss metric is the per-row (or per-batch) losses in the training dtype summed in
  float64 and divided in float64; the regression errors (rmse, mae, r2) are each trial's row of
  a ``[K, rows]`` float64 buffer of exact terms, summed alike (``worker.metrics``).
* Leaving: a trial that is done, diverged, canceled, pruned or stopped early leaves its block
  (``Block.keep``: its rows are dropped from the weights and the optimizer state), which changes
  nothing for the others; its selected epoch's weights are its own row, saved and put back.
* Threads: on a CPU every part trains on one torch thread (``worker.fused_packs``), since how
  a kernel splits its work among threads changes its rounding.

A CPU with another SIMD width (AVX2 vs AVX-512) runs other kernels: each reproduces its own
numbers, and they agree with each other to round-off only. On CUDA nothing here is promised
beyond round-off (cuBLAS picks kernels by the batched shape; deterministic algorithms are
not enabled).

Padding (trials of different widths/depths in one block): hidden widths are
padded with zero weights, so a padded unit's pre-activation is exactly 0 and,
since act(0) = 0 for every activation but sigmoid (which gets a unit mask), it
stays 0 and its gradient is 0; layers beyond a trial's depth pass ``h`` through
(``torch.where``), so their zero weights get zero gradient. Adam/SGD map a zero
gradient on a zero weight to zero: padded entries stay exactly zero.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from gridsweep.vocab import TrialConfig, resolve_loss
from worker.fused_model import Block, BlockEval, evaluate_block, pack_losses
from worker.fused_opt import StackedOptimizer
from worker.metrics import EpochMetrics, TrialResult, selected_metrics, split_metrics, target_sst
from worker.packing import plan_blocks
from worker.selection import LAST, Selection, Tracker
from worker.tensors import TensorSplit, epoch_permutation
from worker.train import n_outputs_for

OnEpoch = Callable[[int, dict[int, EpochMetrics]], Mapping[int, str] | None]
OnFinish = Callable[[dict[int, TrialResult]], None]
OnStep = Callable[[int, list[int], torch.Tensor], None]


class PackStopped(Exception):
    """``should_stop()`` said so before a step: the whole pack stops where it is."""


def _check_pack(cfgs: Sequence[TrialConfig], data: TensorSplit) -> str:
    """Validate that ``cfgs`` may share a pack; return the concrete loss."""
    first = cfgs[0]
    loss = resolve_loss(first.loss, data.task, data.n_classes)
    for c in cfgs:
        shared = (c.batch_size, c.epochs, c.optimizer, resolve_loss(c.loss, data.task, data.n_classes))
        if shared != (first.batch_size, first.epochs, first.optimizer, loss):
            raise ValueError(
                "trials of a pack must share batch_size, epochs, optimizer and loss; got "
                f"{shared} and {(first.batch_size, first.epochs, first.optimizer, loss)}"
            )
        if len(c.hidden_units) != c.layers:
            raise ValueError(
                f"hidden_units {list(c.hidden_units)} has {len(c.hidden_units)} widths for {c.layers} layers"
            )
        if not 0.0 <= c.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {c.dropout}")
    if first.epochs < 1 or first.batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {first.epochs} and {first.batch_size}")
    return loss


def train_pack(
    cfgs: Sequence[TrialConfig],
    data: TensorSplit,
    *,
    on_epoch: OnEpoch | None = None,
    on_finish: OnFinish | None = None,
    evaluate_test: bool = False,
    train_on_validation: bool = False,
    mode: str = "auto",
    keep_models: bool = False,
    allow_tf32: bool = False,
    on_step: OnStep | None = None,
    should_stop: Callable[[], bool] | None = None,
    selections: Sequence[Selection] | None = None,
) -> list[TrialResult]:
    """Train every config of ``cfgs`` at once; the results are in the order of ``cfgs``.

    Each trial ends as ``train_trial`` would end it alone (same statuses, errors, epochs
    and metrics). Callbacks, with ``i`` a position in ``cfgs``:

    * ``on_epoch(epoch, {i: EpochMetrics})`` after each epoch, for the trials still
      training with finite losses (one call for the whole pack, so the caller can
      report them in one request); it may answer ``{i: "cancel"}`` (the trial ends
      ``canceled``, that epoch kept) or ``{i: "drop"}`` (it ends ``dropped``: the caller
      has lost it). An exception raised there aborts the whole pack.
    * ``on_finish({i: TrialResult})`` as soon as trials leave the pack (diverged,
      canceled, dropped, or done), so results can be reported while the rest train.
    * ``on_step(epoch, [i...], losses)`` after every step (tests: per-step losses).
    * ``should_stop()`` before every step: True raises ``PackStopped`` (a worker that is
      shutting down stops within one step, not one epoch).

    ``selections`` (one per config; default: the last epoch, no early stopping) pick each
    trial's epoch and stop it early, as ``train_trial`` does (``worker.selection``): a trial's
    selected weights are a copy of its row of the block's buffer taken when the epoch was
    selected, put back when it leaves (its model and test metrics are that epoch's); an
    early-stopped trial leaves the pack ``succeeded`` like a pruned one leaves it ``canceled``,
    so the pack shrinks and its mates train on with the numbers they get in any pack.

    A trial's ``duration_seconds`` is its share of the pack's wall time: each epoch's time
    split among the trials that trained in it by their size (their block's weights and
    biases, padding included), so wider and deeper configs take the larger shares. ``mode`` chooses blocks
    (``plan_blocks``): ``auto``, ``group`` (exact architecture), ``pad`` (widths padded
    within a depth) or ``pad_all`` (widths and depths padded); only ``auto`` and ``group`` keep
    a trial's numbers independent of its pack (the module docstring, Reproducibility).
    ``allow_tf32`` lets CUDA matmuls use TF32 (faster, but ~1e-3 relative: float32
    results then no longer agree with the reference path to round-off).
    """
    if not cfgs:
        return []
    with _tf32(data.device, allow_tf32):
        return _train_pack(
            cfgs,
            data,
            on_epoch,
            on_finish,
            evaluate_test,
            train_on_validation,
            mode,
            keep_models,
            on_step,
            should_stop,
            list(selections) if selections is not None else [LAST] * len(cfgs),
        )


@contextlib.contextmanager
def _tf32(device: torch.device, allow: bool) -> Iterator[None]:
    """TF32 matmuls on CUDA while the pack trains (restored after)."""
    if device.type != "cuda" or not allow:
        yield
        return
    matmul = torch.backends.cuda.matmul
    attr, value = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    before = getattr(matmul, attr)
    setattr(matmul, attr, value)
    try:
        yield
    finally:
        setattr(matmul, attr, before)


def block_metrics(
    ev: BlockEval, data: TensorSplit, loss: str, n: int, sst: float | None
) -> list[dict[str, float]]:
    """Each trial's metrics on a split of ``n`` rows from its block's sums (``split_metrics``;
    ``sst``: the split's target sum of squares, regression): one copy to the host per block."""
    loss_sum = ev.loss_sum.tolist()
    if data.task != "regression":
        assert ev.correct is not None
        pairs = zip(loss_sum, ev.correct.tolist(), strict=True)
        return [split_metrics(data.task, loss, n, v, correct=c) for v, c in pairs]
    assert ev.sse is not None and ev.sae is not None
    sums = zip(loss_sum, ev.sse.tolist(), ev.sae.tolist(), strict=True)
    return [split_metrics(data.task, loss, n, v, sse=q, sae=a, sst=sst, y_std=data.y_std) for v, q, a in sums]


def scored_on_test(cfg: TrialConfig, model: torch.nn.Module, data: TensorSplit) -> dict[str, float]:
    """A trained model's ``test_*`` metrics, computed as ``train_pack(evaluate_test=True)``
    computes them for the trial (a block of one holding the model's weights, padding zero):
    bit for bit, since a trial's evaluation does not depend on its block."""
    loss = resolve_loss(cfg.loss, data.task, data.n_classes)
    n_out = n_outputs_for(loss, data.n_classes)
    block = Block([cfg], [0], data.n_features, n_out, data.dtype, data.device)
    block.load(0, model)
    ev = evaluate_block(block, data.X_test, data.y_test, loss, data.task)
    sst = target_sst(data.y_test) if data.task == "regression" else None
    (m,) = block_metrics(ev, data, loss, data.X_test.shape[0], sst)
    return {f"test_{k}": v for k, v in m.items()}


def _train_pack(
    cfgs: Sequence[TrialConfig],
    data: TensorSplit,
    on_epoch: OnEpoch | None,
    on_finish: OnFinish | None,
    evaluate_test: bool,
    train_on_validation: bool,
    mode: str,
    keep_models: bool,
    on_step: OnStep | None,
    should_stop: Callable[[], bool] | None,
    selections: list[Selection],
) -> list[TrialResult]:
    t0 = time.perf_counter()
    loss_name = _check_pack(cfgs, data)
    if len(selections) != len(cfgs):
        raise ValueError(f"{len(selections)} selections for {len(cfgs)} trials")
    first = cfgs[0]
    device, dtype = data.device, data.dtype
    n_out = n_outputs_for(loss_name, data.n_classes)
    plan = plan_blocks(cfgs, data.n_features, n_out, mode=mode, device=device, dtype_bytes=dtype.itemsize)
    blocks = [Block([cfgs[i] for i in ids], ids, data.n_features, n_out, dtype, device) for ids in plan]
    opt = StackedOptimizer(first.optimizer, blocks)

    X_fit, y_fit = data.X_train, data.y_train
    if train_on_validation:
        X_fit, y_fit = torch.cat([data.X_train, data.X_val]), torch.cat([data.y_train, data.y_val])
    n_fit, batch = X_fit.shape[0], first.batch_size

    history: list[list[EpochMetrics]] = [[] for _ in cfgs]
    busy = [(time.perf_counter() - t0) / len(cfgs)] * len(cfgs)
    results: dict[int, TrialResult] = {}
    # A refit has no validation split of its own: its last epoch, never stopped early.
    trackers = [Tracker(s.for_refit() if train_on_validation else s) for s in selections]
    stopped: dict[int, int] = {}  # early stopping: trial -> the epoch after which it stopped
    regression = data.task == "regression"
    sst = {"val": target_sst(data.y_val), "test": target_sst(data.y_test)} if regression else {}

    def metrics_of(ev: BlockEval, n: int, split: str) -> list[dict[str, float]]:
        return block_metrics(ev, data, loss_name, n, sst.get(split))

    def leave(out: dict[int, tuple[str, str | None]]) -> None:
        """Finish the trials in ``out`` ({i: (status, error)}) and take them out of the pack."""
        nonlocal blocks
        done: dict[int, TrialResult] = {}
        for blk in blocks:
            gone = [j for j, i in enumerate(blk.ids) if i in out]
            chosen: dict[int, int] = {}  # the epoch each leaving trial keeps
            for j in gone:
                i = blk.ids[j]
                diverged = out[i][0] == "diverged"  # ranks last: its last (non-finite) epoch stands
                chosen[j] = len(history[i]) if diverged else trackers[i].selected_epoch
            # The selected epoch's weights back in the buffer: the model and test metrics are its.
            blk.restore(
                [
                    j
                    for j in gone
                    if out[blk.ids[j]][0] != "diverged" and chosen[j] != len(history[blk.ids[j]])
                ]
            )
            test = None
            if evaluate_test and any(out[blk.ids[j]][0] == "succeeded" for j in gone):
                ev = evaluate_block(blk, data.X_test, data.y_test, loss_name, data.task)
                test = metrics_of(ev, data.X_test.shape[0], "test")
            for j in gone:
                i = blk.ids[j]
                status, error = out[i]
                eps = history[i]
                r = TrialResult(status=status, epochs=eps, error=error, duration_seconds=busy[i])
                r.metrics = selected_metrics(eps, chosen[j])
                r.best_epoch = chosen[j] if eps else None
                r.stopped_epoch = stopped.get(i)
                if keep_models and status in ("succeeded", "canceled"):
                    r.model = blk.model(j, data.n_features, n_out)
                if test is not None and status == "succeeded":
                    r.test_metrics = {f"test_{k}": v for k, v in test[j].items()}
                done[i] = r
            if gone:
                blk.keep([j for j in range(blk.K) if blk.ids[j] not in out])
        blocks = [b for b in blocks if b.K > 0]
        opt.bind(blocks)
        results.update(done)
        if on_finish is not None and done:
            on_finish(done)

    for epoch in range(1, first.epochs + 1):
        te = time.perf_counter()
        ids = [i for b in blocks for i in b.ids]
        # Each trial's share of the epoch's time is by its size (a block's padded weights and biases).
        cost = {i: b.flat.shape[1] for b in blocks for i in b.ids}
        perm = epoch_permutation(n_fit, data.split_seed, epoch).to(device)
        # One gather per epoch; each batch is then a contiguous slice (same rows as X_fit[idx]).
        Xp, yp = X_fit[perm], y_fit[perm]
        total = torch.zeros(len(ids), dtype=torch.float64, device=device)
        for start in range(0, n_fit, batch):
            # A flag read per step (~100 ns) lets a worker stop within one step, not one epoch.
            if should_stop is not None and should_stop():
                raise PackStopped
            xb, yb = Xp[start : start + batch], yp[start : start + batch]
            outs = [b.forward(xb, train=True) for b in blocks]
            losses = pack_losses(torch.cat(outs) if len(outs) > 1 else outs[0], yb, loss_name)
            # Trials share no parameter: the gradient of the sum is each trial's own gradient.
            opt.step(torch.autograd.grad(losses.sum(), opt.params))
            losses = losses.detach()
            total += losses.double() * xb.shape[0]
            if on_step is not None:
                on_step(epoch, ids, losses)
        train_loss = (total / n_fit).tolist()
        n_val = data.X_val.shape[0]
        out: dict[int, tuple[str, str | None]] = {}
        fine: dict[int, EpochMetrics] = {}
        stops: list[int] = []
        k = 0
        for b in blocks:
            val = metrics_of(evaluate_block(b, data.X_val, data.y_val, loss_name, data.task), n_val, "val")
            keep: list[int] = []  # positions in b whose epoch is selected so far: save their weights
            for j, i in enumerate(b.ids):
                m = EpochMetrics.of(epoch, train_loss[k], val[j])
                k += 1
                history[i].append(m)
                checks = (("train", m.train_loss), ("val", m.val_loss))
                bad = [(w, v) for w, v in checks if not math.isfinite(v)]
                if bad:
                    out[i] = ("diverged", f"{bad[0][0]} loss became {bad[0][1]} in epoch {epoch}")
                    continue
                fine[i] = m
                save, stop = trackers[i].update(epoch, m.value(trackers[i].sel.metric))
                if save:
                    keep.append(j)
                if stop:
                    stops.append(i)
            b.snapshot(keep)
        per_weight = (time.perf_counter() - te) / max(1, sum(cost.values()))
        for i in ids:
            busy[i] += per_weight * cost[i]
        if on_epoch is not None and fine:
            for i, decision in (on_epoch(epoch, fine) or {}).items():
                if decision not in ("cancel", "drop"):
                    raise ValueError(f"on_epoch answered {decision!r} for trial {i} (use cancel or drop)")
                out[i] = ("canceled", None) if decision == "cancel" else ("dropped", None)
        last = epoch == first.epochs
        for i in stops:  # early stopping: done, the pack goes on without it
            if i not in out and not last:
                out[i] = ("succeeded", None)
                stopped[i] = epoch
        if last:
            out.update({i: ("succeeded", None) for i in ids if i not in out})
        if out:
            leave(out)
        if not blocks:
            break
    return [results[i] for i in range(len(cfgs))]
