"""Stacked MLPs for fused training: a block of trials, their dropout, losses and evaluation.

Pure: torch + worker.train helpers. See worker/fused.py for the exactness and
reproducibility rules.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from gridsweep.vocab import ACTIVATIONS, TrialConfig
from worker.metrics import error_sums
from worker.packing import padded_widths
from worker.train import DROPOUT_SEED_OFFSET, build_model, init_linear_params

# Applied in place on the fresh pre-activation (the matmul does not keep it for backward):
# the same kernels as the reference's modules, one allocation less. gelu and silu need
# their input for backward, so they get a new tensor.
ACTIVATION_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu_,
    "tanh": torch.tanh_,
    "sigmoid": torch.sigmoid_,
    "gelu": F.gelu,
    "leaky_relu": lambda x: F.leaky_relu_(x, 0.01),
    "elu": lambda x: F.elu_(x, 1.0),
    "silu": F.silu,
}
# CPU: elements of one trial's evaluation chunk ([rows, width]). The chunk's rows depend on the
# block's width alone, not on its K, so a trial's validation loss sums the same chunks in any
# pack; a block's chunk then stays in cache like a training batch (a whole 5,000-row split does
# not: elementwise ops then run ~10x slower per element).
EVAL_TRIAL_ELEMENTS = 1 << 15
# GPU: elements of a whole block's chunk ([K, rows, width]): it only bounds memory, since each
# chunk costs kernel launches (nothing on CUDA is exact across packs anyway).
EVAL_CUDA_CHUNK_ELEMENTS = 1 << 26
# Per-row losses are computed on rows padded to a multiple of this (see ``pack_losses``).
ROW_MULTIPLE = 32


class SigmoidTanh(torch.autograd.Function):
    """``tanh`` as ``2 * sigmoid(2x) - 1`` in place, for CPUs: torch's CPU ``tanh`` kernel is
    ~3.5x slower than its ``sigmoid`` here (AVX2, 3.2 vs 0.9 ns/element), and a tanh block
    spent more time in ``tanh`` than in its matmuls. The result is within ~1 ulp of 1.0 of
    ``torch.tanh`` (absolute: a unit near 0 loses relative precision, which is below the
    matmul's own round-off in the next layer); the backward is torch's own ``tanh_backward``
    on the saved output, as for ``torch.tanh``.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = x.mul_(2).sigmoid_().mul_(2).sub_(1)
        ctx.mark_dirty(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


@functools.cache
def cpu_vendor() -> str:
    """The CPU's ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``; ``""`` where unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def sigmoid_tanh_is_faster() -> bool:
    """Whether this CPU makes ``SigmoidTanh`` the faster tanh. Measured per [16, 256, 128]
    float32 block on one core: with AVX2 kernels torch's ``tanh`` is ~3.5x slower than its
    ``sigmoid``; with AVX-512 kernels on an Intel Xeon ``tanh_`` takes 0.20 ms against 0.55 ms
    for the four passes of ``SigmoidTanh``, but on an AMD EPYC with AVX-512 (whose 512-bit
    operations take two passes through 256-bit units) 1.37 ms against ~0.4 ms. So ``tanh_``
    only where torch runs AVX-512 kernels on an Intel CPU.

    A rule, not a timing: it must give the same answer on every run of a machine (the two
    compute tanh with different round-off, and a trial's numbers are reproduced bit for bit
    per kind of CPU; worker/fused.py). ``ATEN_CPU_CAPABILITY=avx2`` gets the AVX2 choice."""
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    return not (avx512 and cpu_vendor() == "GenuineIntel")


def activation_fn(name: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The in-place activation of a block on ``device``."""
    if name == "tanh" and device.type == "cpu" and sigmoid_tanh_is_faster():
        return SigmoidTanh.apply
    if name not in ACTIVATION_FNS:  # the reference's error (a trial queued by a newer API)
        raise ValueError(f"unknown activation {name!r} (use one of {ACTIVATIONS})")
    return ACTIVATION_FNS[name]


class SingleOutput(torch.autograd.Function):
    """``h @ w + b`` for a one-unit output layer (regression, bce): ``h [K,n,H]``, ``w [K,H,1]``.

    A batched matrix-vector product is several times slower on a CPU, forward and
    backward, than a broadcast multiply with a row sum (forward), a broadcast multiply
    (input gradient) and a column sum (weight gradient). It is also not exact across packs:
    ``bmm`` of one matrix-vector product (K = 1) takes another BLAS kernel than a batch of
    them, while these reductions compute each trial's values alike for any K.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, w)
        return (h * w.transpose(1, 2)).sum(dim=-1, keepdim=True) + b

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        h, w = ctx.saved_tensors
        grad_h = grad * w.transpose(1, 2) if ctx.needs_input_grad[0] else None
        grad_w = (grad * h).sum(dim=1).unsqueeze(-1)
        return grad_h, grad_w, grad.sum(dim=1, keepdim=True)


class BlockDropout:
    """Per-trial inverted dropout: masks from each trial's own generator at its true width."""

    def __init__(
        self, cfgs: Sequence[TrialConfig], widths: list[int], dtype: torch.dtype, device: torch.device
    ):
        self.p = [c.dropout for c in cfgs]
        self.gens = [
            torch.Generator(device=device).manual_seed(c.seed + DROPOUT_SEED_OFFSET)
            if c.dropout > 0
            else None
            for c in cfgs
        ]
        # True width of each trial at each padded layer (0: the layer is not the trial's).
        self.true_w = [[c.hidden_units[i] if i < c.layers else 0 for i in range(len(widths))] for c in cfgs]
        # The reference multiplies by the Python float 1/(1-p), which the kernel rounds to the dtype.
        self.scale = torch.tensor([1.0 / (1.0 - p) for p in self.p], dtype=torch.float64)
        self.scale = self.scale.to(dtype=dtype, device=device).view(-1, 1, 1)

    def keep(self, kept: list[int]) -> None:
        self.p = [self.p[i] for i in kept]
        self.gens = [self.gens[i] for i in kept]
        self.true_w = [self.true_w[i] for i in kept]
        self.scale = self.scale[kept]

    def __call__(self, a: torch.Tensor, layer: int) -> torch.Tensor:
        mask = torch.ones_like(a)
        rows = a.shape[1]
        for k, g in enumerate(self.gens):
            w = self.true_w[k][layer]
            if g is None or w == 0:
                continue
            draw = torch.rand((rows, w), generator=g, device=a.device, dtype=torch.float32)
            mask[k, :, :w] = draw >= self.p[k]
        return (a * mask) * self.scale


class Block:
    """Trials of one activation, weights stacked per layer; widths/depths padded to the largest."""

    def __init__(
        self,
        cfgs: Sequence[TrialConfig],
        ids: list[int],
        n_features: int,
        n_outputs: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        acts = {c.activation for c in cfgs}
        if len(acts) != 1:
            raise ValueError(f"a block needs one activation, got {sorted(acts)}")
        self.ids = list(ids)
        self.cfgs = list(cfgs)
        self.act_name = cfgs[0].activation
        self.act = activation_fn(self.act_name, device)
        widths = padded_widths(cfgs)
        depth = len(widths)
        self.depth, self.widths = depth, widths
        dims = [n_features, *widths, n_outputs]
        K = len(cfgs)
        Ws = [torch.zeros(K, i, o, dtype=torch.float64) for i, o in itertools.pairwise(dims)]
        bs = [torch.zeros(K, 1, o, dtype=torch.float64) for o in dims[1:]]
        for k, c in enumerate(cfgs):
            g = torch.Generator().manual_seed(c.seed)  # the trial's own init stream, as build_model
            true_dims = [n_features, *c.hidden_units, n_outputs]
            slots = [*range(c.layers), depth]  # the output layer is always the last slot
            for slot, (fan_in, fan_out) in zip(slots, itertools.pairwise(true_dims), strict=True):
                w, b = init_linear_params(g, fan_in, fan_out)
                Ws[slot][k, :fan_in, :fan_out] = w
                bs[slot][k, 0, :fan_out] = b
        # One [K, P] buffer per block, a trial per row; the parameters are views of it, so the
        # optimizer runs a handful of ops over the buffer instead of a handful per parameter.
        init = [t.reshape(K, -1) for pair in zip(Ws, bs, strict=True) for t in pair]
        self.shapes = [t.shape[1:] for pair in zip(Ws, bs, strict=True) for t in pair]
        self.flat = torch.cat(init, dim=1).to(device=device, dtype=dtype)
        self._view_params()
        self.depth_mask: list[torch.Tensor | None] = []  # per hidden layer: [K,1,1] True = the trial's layer
        self.unit_mask: list[torch.Tensor | None] = []  # per hidden layer: [K,1,w] for sigmoid when padded
        for layer in range(depth):
            on = [c.layers > layer for c in cfgs]
            self.depth_mask.append(None if all(on) else torch.tensor(on, device=device).view(K, 1, 1))
            true_w = [c.hidden_units[layer] if c.layers > layer else widths[layer] for c in cfgs]
            if self.act_name == "sigmoid" and min(true_w) < widths[layer]:
                m = torch.zeros(K, 1, widths[layer], dtype=dtype)
                for k, w in enumerate(true_w):
                    m[k, 0, :w] = 1
                self.unit_mask.append(m.to(device))
            else:
                self.unit_mask.append(None)
        self.dropout = BlockDropout(cfgs, widths, dtype, device) if any(c.dropout > 0 for c in cfgs) else None
        self.opt_state: dict[str, list[torch.Tensor]] = {}  # owned by StackedOptimizer
        # The selected epoch's weights of each trial (``select_epoch: best``), rows like ``flat``:
        # allocated at the first snapshot, a trial's row copied when its epoch is selected.
        self.saved: torch.Tensor | None = None

    @property
    def K(self) -> int:
        return len(self.ids)

    def _view_params(self) -> None:
        """``params``: per layer ``W [K, in, out]`` and ``b [K, 1, out]``, views of ``flat``
        (row stride P: batched matmuls take it as is) that autograd treats as leaves."""
        self.params = []
        start = 0
        for shape in self.shapes:
            n = shape.numel()
            self.params.append(self.flat[:, start : start + n].view(self.K, *shape).requires_grad_())
            start += n

    def keep(self, kept: list[int]) -> None:
        """Drop every trial not in ``kept`` (positions in this block)."""
        idx = torch.tensor(kept, dtype=torch.long, device=self.flat.device)
        with torch.no_grad():
            self.flat = self.flat.index_select(0, idx)
            self.opt_state = {k: [t.index_select(0, idx) for t in v] for k, v in self.opt_state.items()}
            if self.saved is not None:
                self.saved = self.saved.index_select(0, idx)
        self.depth_mask = [None if m is None else m[kept] for m in self.depth_mask]
        self.unit_mask = [None if m is None else m[kept] for m in self.unit_mask]
        if self.dropout is not None:
            self.dropout.keep(kept)
        self.ids = [self.ids[i] for i in kept]
        self.cfgs = [self.cfgs[i] for i in kept]
        self._view_params()

    @torch.no_grad()
    def snapshot(self, js: list[int]) -> None:
        """Save the current weights of trials ``js`` (positions in this block): only their rows."""
        if not js:
            return
        if self.saved is None:
            self.saved = torch.empty_like(self.flat)
        idx = torch.tensor(js, dtype=torch.long, device=self.flat.device)
        self.saved.index_copy_(0, idx, self.flat.index_select(0, idx))

    @torch.no_grad()
    def restore(self, js: list[int]) -> None:
        """Put the saved weights of trials ``js`` back (trials leaving the pack: their model and
        test evaluation are the selected epoch's). Each must have been saved once."""
        if not js:
            return
        assert self.saved is not None
        idx = torch.tensor(js, dtype=torch.long, device=self.flat.device)
        self.flat.index_copy_(0, idx, self.saved.index_select(0, idx))

    def forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """``x [n, d]`` (shared by every trial) -> outputs ``[K, n, n_outputs]``."""
        h = x.expand(self.K, *x.shape)
        for layer in range(self.depth):
            a = self.act(torch.baddbmm(self.params[2 * layer + 1], h, self.params[2 * layer]))
            if self.unit_mask[layer] is not None:
                a = a * self.unit_mask[layer]
            if train and self.dropout is not None:
                a = self.dropout(a, layer)
            if self.depth_mask[layer] is not None:
                a = torch.where(self.depth_mask[layer], a, h)
            h = a
        W, b = self.params[-2], self.params[-1]
        if W.shape[-1] == 1:
            return SingleOutput.apply(h, W, b)
        return torch.baddbmm(b, h, W)

    @torch.no_grad()
    def load(self, j: int, model: torch.nn.Module) -> None:
        """Put a reference ``nn.Sequential`` of trial ``j``'s config into its row (the inverse
        of ``model``): its true weights, zeros in the padding, as training leaves them."""
        c = self.cfgs[j]
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        slots = [*range(c.layers), self.depth]
        if len(linears) != len(slots):
            raise ValueError(f"a model of {len(linears)} linear layers for a trial of {len(slots)}")
        self.flat[j].zero_()
        for lin, slot in zip(linears, slots, strict=True):
            W, b = self.params[2 * slot][j], self.params[2 * slot + 1][j, 0]
            W[: lin.in_features, : lin.out_features].copy_(lin.weight.T)
            b[: lin.out_features].copy_(lin.bias)

    def model(self, j: int, n_features: int, n_outputs: int) -> torch.nn.Module:
        """Trial ``j`` of the block as the reference ``nn.Sequential`` (its true, unpadded weights)."""
        c = self.cfgs[j]
        p0 = self.flat
        model = build_model(c, n_features, n_outputs, dtype=p0.dtype, device=p0.device)
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        slots = [*range(c.layers), self.depth]
        with torch.no_grad():
            for lin, slot in zip(linears, slots, strict=True):
                W, b = self.params[2 * slot][j], self.params[2 * slot + 1][j, 0]
                lin.weight.copy_(W[: lin.in_features, : lin.out_features].T)
                lin.bias.copy_(b[: lin.out_features])
        return model


def pack_losses(out: torch.Tensor, y: torch.Tensor, loss: str, mean: bool = True) -> torch.Tensor:
    """Per-trial loss ``[K]`` (mean over rows, or the float64 sum with ``mean=False``) of ``out [K, n, o]``.

    The per-row losses are computed on ``n`` rows padded to a multiple of ``ROW_MULTIPLE``
    (zero outputs, class-0 targets; dropped before the reduction), so each trial's slab of every
    elementwise kernel (log-sigmoid, log-softmax, their gradients) is whole SIMD steps and no
    row of any trial falls in a kernel's scalar remainder: a trial's losses do not depend on K.
    """
    K, n = out.shape[0], out.shape[1]
    pad = -n % ROW_MULTIPLE
    if pad:
        out = torch.cat([out, out.new_zeros(K, pad, out.shape[2])], dim=1)
        y = torch.cat([y, y.new_zeros(pad, *y.shape[1:])])
    if loss == "cross_entropy":
        per = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.expand(K, -1).reshape(-1), reduction="none")
        per = per.view(K, -1)
    else:
        t = y.reshape(-1, 1).to(out.dtype) if loss == "bce" else y
        t = t.expand(K, *t.shape)
        if loss == "mse":
            per = F.mse_loss(out, t, reduction="none")
        elif loss == "mae":
            per = F.l1_loss(out, t, reduction="none")
        elif loss == "huber":
            per = F.huber_loss(out, t, reduction="none", delta=1.0)
        elif loss == "bce":
            per = F.binary_cross_entropy_with_logits(out, t, reduction="none")
        else:
            raise ValueError(f"unknown loss {loss!r}")
        per = per.flatten(1)
    per = per[:, :n] if pad else per  # one loss per row: one output unit, or cross_entropy's per row
    return per.mean(dim=1) if mean else per.sum(dim=1, dtype=torch.float64)


def eval_rows(width: int, K: int, device_type: str) -> int:
    """Rows of one evaluation chunk for a block of K trials of hidden ``width``: on a CPU a
    multiple of ``ROW_MULTIPLE`` that depends on the width alone."""
    if device_type == "cuda":
        return max(1, EVAL_CUDA_CHUNK_ELEMENTS // (K * width))
    return max(ROW_MULTIPLE, EVAL_TRIAL_ELEMENTS // width // ROW_MULTIPLE * ROW_MULTIPLE)


class BlockEval(NamedTuple):
    """A block's trials on a split, per trial (``[K]`` float64): the mean loss and accuracy as
    before, and the float64 sums ``worker.metrics.split_metrics`` turns into every metric."""

    loss: torch.Tensor
    accuracy: torch.Tensor | None  # classification
    loss_sum: torch.Tensor
    correct: torch.Tensor | None  # classification
    sse: torch.Tensor | None  # regression: sum (out - y)^2, standardized units
    sae: torch.Tensor | None  # regression: sum |out - y|


@torch.no_grad()
def evaluate_block(block: Block, X: torch.Tensor, y: torch.Tensor, loss: str, task: str) -> BlockEval:
    """All trials of ``block`` on ``(X, y)`` in eval mode (``BlockEval``).

    The loss is the float64 sum of the per-row losses over chunks of ``eval_rows`` rows (each
    chunk summed in float64, the chunk sums added in order), divided by the rows: on a CPU
    chunks of a width's fixed size, so a trial's validation loss is the same in any pack. The
    regression error sums are taken alike (``worker.metrics.error_sums`` per chunk: each trial's
    errors a contiguous row of a ``[K, rows]`` float64 buffer, exact per element, summed per row).
    """
    n = X.shape[0]
    rows = eval_rows(max(block.widths), block.K, X.device.type)
    total = torch.zeros(block.K, dtype=torch.float64, device=X.device)
    correct = torch.zeros_like(total) if task == "classification" else None
    sse = None if task == "classification" else torch.zeros_like(total)
    sae = None if sse is None else torch.zeros_like(total)
    for start in range(0, n, rows):
        out, yc = block.forward(X[start : start + rows], train=False), y[start : start + rows]
        total += pack_losses(out, yc, loss, mean=False)
        if correct is not None:
            pred = (out[:, :, 0] > 0).long() if loss == "bce" else out.argmax(dim=2)
            correct += (pred == yc).sum(dim=1, dtype=torch.float64)
        elif sse is not None and sae is not None:
            sq, ab = error_sums(out[:, :, 0], yc[:, 0], dim=1)
            sse += sq
            sae += ab
    acc = None if correct is None else correct / n
    return BlockEval(total / n, acc, total, correct, sse, sae)
