"""Train one MLP trial: the reference path the fused multi-trial engine must agree with.

Pure: torch + gridsweep.vocab + worker.tensors (the data, the device, the batch order); no
database or HTTP.

Contracts (exact, so another implementation can reproduce a trial bit for bit):

* Model: ``cfg.layers`` blocks of ``Linear(width) -> activation -> Dropout(p)`` then an
  output ``Linear``. Activations: relu, tanh, sigmoid, gelu (exact erf form),
  leaky_relu (slope 0.01), elu (alpha 1), silu. The Dropout module is present even
  when p == 0 (it is then the identity and draws nothing), so the layout is fixed.
* Init: ``g = torch.Generator().manual_seed(cfg.seed)`` on CPU. For each Linear in
  order, draw ``W`` of shape ``[fan_in, fan_out]`` then ``b`` of shape ``[fan_out]`` as
  ``torch.rand(shape, generator=g, dtype=float64) * 2 * bound - bound`` with
  ``bound = 1 / sqrt(fan_in)``; cast to the training dtype and move to the device
  (``weight = W.T``). float32 and float64 runs therefore start from the same weights.
* Dropout: one generator per model, ``torch.Generator(device).manual_seed(cfg.seed +
  DROPOUT_SEED_OFFSET)``, shared by the dropout layers in forward order. In training,
  ``keep = torch.rand(x.shape, generator=g, device=x.device, dtype=float32) >= p`` and
  the output is ``(x * keep) * (1 / (1 - p))`` (inverted dropout). Masks are drawn in
  float32 whatever the training dtype, so float32 and float64 runs drop the same units.
  No draws in eval mode or when p == 0.
* Minibatches: epoch ``e`` (1-based) uses ``torch.randperm(n_fit, generator=
  torch.Generator().manual_seed(split_seed * 1_000_003 + e))`` on CPU, moved to the
  device, cut into batches of ``cfg.batch_size`` (the last partial batch is kept).
  The order depends on the split, not the trial, so every trial of a sweep sees the
  same batches. ``n_fit`` is n_train, or n_train + n_val (train then val rows) with
  ``train_on_validation``.
* Losses (mean over the batch): mse, mae (L1), huber (delta 1), bce (one logit,
  BCE-with-logits), cross_entropy (n_classes logits). Targets: classification labels
  are int64 ``[n]`` (bce turns them into float ``[n, 1]``), regression targets are
  ``[n, 1]`` in the training dtype, in standardized units (see ``split_dataset``).
* Optimizers: sgd, momentum (SGD, momentum ``MOMENTUM``; ``foreach=False``), adam,
  adamw (``fused=True``: torch's one-pass kernel), all with ``lr=cfg.learning_rate`` and
  ``weight_decay=cfg.weight_decay``.
  Per step: ``zero_grad(set_to_none=True)``, forward, loss, backward, step.
* Metrics: an epoch's train_loss is ``sum(batch_loss * batch_size) / n_fit``,
  accumulated in float64 on the device. After each epoch the whole val split is
  evaluated in eval mode (no dropout): val_loss (the per-row losses, in the training
  dtype, summed in float64 and divided by the rows), and for classification
  val_accuracy and val_error = 1 - val_accuracy (bce predicts class 1 iff logit > 0,
  cross_entropy predicts the argmax) and val_log_loss (the cross-entropy of the predicted
  class probabilities in nats: both classification losses are that, so it is val_loss);
  for regression, from the per-row errors ``d = out - y`` in the training dtype, taken to
  float64 and squared / made absolute there, summed in float64: val_rmse =
  ``sqrt(sum d^2 / n) * y_std`` and val_mae = ``sum |d| / n * y_std`` in the target's own
  units (``y_std`` of the split's standardization), val_r2 = ``1 - sum d^2 / sum (y -
  mean y)^2`` (scale free; NaN when the split's targets are constant). ``split_metrics``
  turns the sums into the numbers on both paths. The test split gets the same set.
* Selection (``worker.selection``): the result's ``metrics`` are the SELECTED epoch's (the
  last by default; ``select_epoch="best"``: the best by the selection's metric, the earliest
  on ties), ``best_epoch`` records it, and the model (and the test evaluation) holds that
  epoch's weights (a state_dict snapshot taken when the epoch was selected). Early stopping
  ends the trial ``succeeded`` after the epoch that runs out of patience (``stopped_epoch``).
  With ``train_on_validation`` the selection is always the last epoch, never stopped early.
* Divergence: a NaN/inf train or val loss ends the trial with status "diverged"
  (error "train loss became nan in epoch 3"); that epoch is kept in ``epochs`` and
  ``metrics`` (non-finite values included), ``on_epoch`` is not called for it, and
  no model is returned.
* Cancel: ``on_epoch(metrics)`` returning True after an epoch ends the trial with
  status "canceled" (that epoch is kept). Test evaluation runs only for "succeeded".
* Stop: ``should_stop()`` is asked before every optimizer step (an epoch may be long);
  True ends the trial at once with status "stopped", the unfinished epoch dropped. The
  caller gives such a trial back to the queue (a worker shutting down, a lease lost).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gridsweep.vocab import ACTIVATIONS, MOMENTUM, OPTIMIZERS, TrialConfig, resolve_loss
from worker.metrics import (
    EpochMetrics,
    TrialResult,
    error_sums,
    selected_metrics,
    split_metrics,
    target_sst,
)
from worker.selection import LAST, Selection, Tracker
from worker.tensors import TensorSplit, epoch_permutation

DROPOUT_SEED_OFFSET = 1_000_003


# ----------------------------------------------------------------------------- model


class Dropout(nn.Module):
    """Inverted dropout drawing its masks from an explicit generator (not the global RNG),
    so a trial's masks depend only on its own seed, whatever else runs in the process."""

    def __init__(self, p: float, generator: torch.Generator) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = float(p)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=torch.float32) >= self.p
        return (x * keep) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "gelu":
        return nn.GELU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01)
    if name == "elu":
        return nn.ELU(alpha=1.0)
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r} (use one of {ACTIVATIONS})")


def init_linear_params(g: torch.Generator, fan_in: int, fan_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw (W [fan_in, fan_out], b [fan_out]) in float64 from ``g``, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    w = torch.rand(fan_in, fan_out, generator=g, dtype=torch.float64) * (2 * bound) - bound
    b = torch.rand(fan_out, generator=g, dtype=torch.float64) * (2 * bound) - bound
    return w, b


def n_outputs_for(loss: str, n_classes: int) -> int:
    """Width of the output layer: one unit for regression and bce, n_classes logits for cross_entropy."""
    if loss == "cross_entropy":
        if n_classes < 2:
            raise ValueError(f"cross_entropy needs at least 2 classes, got {n_classes}")
        return n_classes
    return 1


def _uninit_linear(fan_in: int, fan_out: int, *, dtype: torch.dtype, device: torch.device) -> nn.Linear:
    """An ``nn.Linear`` with uninitialized parameters (no draw from the global RNG). Not
    ``torch.nn.utils.skip_init``: its meta-device pass imports sympy (~0.7 s) on the first model."""
    lin = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(lin)
    lin.in_features, lin.out_features = fan_in, fan_out
    lin.weight = nn.Parameter(torch.empty(fan_out, fan_in, dtype=dtype, device=device))
    lin.bias = nn.Parameter(torch.empty(fan_out, dtype=dtype, device=device))
    return lin


def build_model(
    cfg: TrialConfig, n_features: int, n_outputs: int, *, dtype: torch.dtype, device: torch.device | str
) -> nn.Module:
    """The trial's MLP (an ``nn.Sequential``), initialized from ``cfg.seed`` as the module docstring says."""
    if len(cfg.hidden_units) != cfg.layers:
        raise ValueError(
            f"hidden_units {list(cfg.hidden_units)} has {len(cfg.hidden_units)} widths "
            f"for {cfg.layers} layers"
        )
    device = torch.device(device)
    drop_gen = torch.Generator(device=device).manual_seed(cfg.seed + DROPOUT_SEED_OFFSET)
    # Init comes from the trial's own CPU generator, in float64, then is cast once to
    # the training dtype: the weights depend on cfg.seed alone (not on dtype, device or
    # the global RNG, which _uninit_linear leaves untouched).
    g = torch.Generator().manual_seed(cfg.seed)
    mods: list[nn.Module] = []
    widths = [n_features, *cfg.hidden_units, n_outputs]
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        lin = _uninit_linear(fan_in, fan_out, dtype=dtype, device=device)
        w, b = init_linear_params(g, fan_in, fan_out)
        with torch.no_grad():
            lin.weight.copy_(w.T)  # nn.Linear stores [out, in]
            lin.bias.copy_(b)
        mods.append(lin)
        if i < cfg.layers:
            mods += [_activation(cfg.activation), Dropout(cfg.dropout, drop_gen)]
    return nn.Sequential(*mods)


# ----------------------------------------------------------------------------- loss & eval


def compute_loss(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean loss of model outputs ``out`` against targets ``y`` (as stored in a TensorSplit)."""
    return row_losses(out, y, loss, reduction="mean")


def row_losses(out: torch.Tensor, y: torch.Tensor, loss: str, reduction: str = "none") -> torch.Tensor:
    """The loss of each row of ``out`` against ``y`` (``reduction="mean"``: their mean)."""
    if loss == "mse":
        return F.mse_loss(out, y, reduction=reduction)
    if loss == "mae":
        return F.l1_loss(out, y, reduction=reduction)
    if loss == "huber":
        return F.huber_loss(out, y, reduction=reduction, delta=1.0)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(out, y.reshape(-1, 1).to(out.dtype), reduction=reduction)
    if loss == "cross_entropy":
        return F.cross_entropy(out, y, reduction=reduction)
    raise ValueError(f"unknown loss {loss!r}")


@torch.no_grad()
def evaluate(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss: str, task: str, y_std: float | None = None
) -> dict[str, float]:
    """The split's metrics (``split_metrics``) in eval mode (no dropout): loss, and accuracy, error
    and log_loss for classification, rmse, mae (in target units with ``y_std``) and r2 for regression."""
    was_training = model.training
    model.eval()
    try:
        out = model(X)
    finally:
        model.train(was_training)
    # The per-row losses (training dtype) summed in float64, as the fused engine does.
    loss_sum = float(row_losses(out, y, loss).sum(dtype=torch.float64))
    n = X.shape[0]
    if task == "classification":
        pred = (out[:, 0] > 0).long() if loss == "bce" else out.argmax(dim=1)
        correct = float((pred == y).sum(dtype=torch.float64))
        return split_metrics(task, loss, n, loss_sum, correct=correct)
    sse, sae = error_sums(out[:, 0], y[:, 0], dim=0)
    return split_metrics(
        task, loss, n, loss_sum, sse=float(sse), sae=float(sae), sst=target_sst(y), y_std=y_std
    )


# ----------------------------------------------------------------------------- training


def make_optimizer(cfg: TrialConfig, params: Any) -> torch.optim.Optimizer:
    # SGD: foreach=False, the plain per-parameter loop, the simplest path for a fused
    # implementation to reproduce exactly. Adam/AdamW: torch's fused kernel (one pass per
    # tensor), which the fused engine calls on each trial's own tensors on a CPU.
    lr, wd = cfg.learning_rate, cfg.weight_decay
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, foreach=False)
    if cfg.optimizer == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=wd, foreach=False)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (use one of {OPTIMIZERS})")


def train_trial(
    cfg: TrialConfig,
    data: TensorSplit,
    *,
    on_epoch: Callable[[EpochMetrics], bool | None] | None = None,
    evaluate_test: bool = False,
    train_on_validation: bool = False,
    should_stop: Callable[[], bool] | None = None,
    selection: Selection = LAST,
) -> TrialResult:
    """Train ``cfg`` on ``data`` for ``cfg.epochs`` epochs (see the module docstring for the exact rules)."""
    t0 = time.perf_counter()
    loss_name = resolve_loss(cfg.loss, data.task, data.n_classes)  # also checks loss vs task
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {cfg.epochs} and {cfg.batch_size}")

    device, dtype = data.device, data.dtype
    n_out = n_outputs_for(loss_name, data.n_classes)
    model = build_model(cfg, data.n_features, n_out, dtype=dtype, device=device)
    opt = make_optimizer(cfg, model.parameters())

    X_fit, y_fit = data.X_train, data.y_train
    if train_on_validation:  # refit: the final model sees every non-test row
        X_fit, y_fit = torch.cat([data.X_train, data.X_val]), torch.cat([data.y_train, data.y_val])
    n_fit = X_fit.shape[0]

    epochs: list[EpochMetrics] = []
    tracker = Tracker(selection.for_refit() if train_on_validation else selection)
    snapshot: dict[str, torch.Tensor] | None = None  # the selected epoch's weights (``best``)

    def done(
        status: str, error: str | None = None, keep_model: bool = True, stopped: int | None = None
    ) -> TrialResult:
        if status == "diverged":  # ranks last: its last (non-finite) epoch stands
            chosen = len(epochs)
        else:
            chosen = tracker.selected_epoch
            if keep_model and snapshot is not None and chosen != len(epochs):
                model.load_state_dict(snapshot)  # the selected epoch's weights
        return TrialResult(
            status=status,
            epochs=epochs,
            metrics=selected_metrics(epochs, chosen),
            error=error,
            duration_seconds=time.perf_counter() - t0,
            model=model if keep_model else None,
            best_epoch=chosen if epochs else None,
            stopped_epoch=stopped,
        )

    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = epoch_permutation(n_fit, data.split_seed, epoch).to(device)
        # Sum on the device (float64) and read it once per epoch: no host sync per batch.
        total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, n_fit, cfg.batch_size):
            # A flag read per step (~100 ns) lets a worker stop within one step, not one epoch.
            if should_stop is not None and should_stop():
                return done("stopped", keep_model=False)
            idx = perm[start : start + cfg.batch_size]
            loss = compute_loss(model(X_fit[idx]), y_fit[idx], loss_name)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach().double() * idx.shape[0]
        train_loss = float(total) / n_fit

        val = evaluate(model, data.X_val, data.y_val, loss_name, data.task, data.y_std)
        m = EpochMetrics.of(epoch, train_loss, val)
        epochs.append(m)
        for which, value in (("train", m.train_loss), ("val", m.val_loss)):
            if not math.isfinite(value):
                return done("diverged", f"{which} loss became {value} in epoch {epoch}", keep_model=False)
        keep, stop = tracker.update(epoch, m.value(tracker.sel.metric))
        if keep:
            snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None and on_epoch(m) is True:
            return done("canceled")
        if stop and epoch < cfg.epochs:
            break

    result = done("succeeded", stopped=epoch if epoch < cfg.epochs else None)
    if evaluate_test:
        t = evaluate(model, data.X_test, data.y_test, loss_name, data.task, data.y_std)
        result.test_metrics = {f"test_{k}": v for k, v in t.items()}
    result.duration_seconds = time.perf_counter() - t0
    return result
