"""One optimizer step for every stacked tensor of a pack, as torch.optim does it per trial.

Reproduces ``torch.optim`` SGD (with and without momentum), Adam and AdamW on the
``foreach=False`` path, elementwise op for op, with per-trial learning rate and
weight decay as ``[K, 1, 1]`` tensors (one row per trial of a block):

* ``grad.add(param, alpha=wd)`` -> ``addcmul(grad, param, wd_k)`` (the CPU kernels
  round both with one fused multiply-add);
* ``param.add_(grad, alpha=-lr)`` -> ``addcmul_(param, grad, -lr_k)``;
* ``param.addcdiv_(m, denom, value=-step)`` -> ``addcdiv_(param, m * -step_k, denom)``: the
  kernel computes ``param + (-step * m) / denom`` either way; ``step_k = lr_k /
  bias_correction1`` in float64, as Python does;
* ``(sqrt(v) / bc2_sqrt).add_(eps)`` -> ``addcdiv(eps, sqrt(v), bc2_sqrt)``, same rounding;
* AdamW's ``param.mul_(1 - lr * wd)`` -> ``mul_`` by the per-trial factor (float64 math).

``torch._foreach_*`` runs each op over every tensor of the pack in one call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from worker.config import MOMENTUM

if TYPE_CHECKING:
    from worker.fused_model import Block

# torch.optim.Adam / AdamW defaults (the reference path uses them).
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


class StackedOptimizer:
    """Optimizer state lives in each block's ``opt_state`` (so a block can drop trials);
    ``bind`` gathers the pack's flat lists again after blocks changed."""

    def __init__(self, kind: str, blocks: list[Block]) -> None:
        if kind not in ("sgd", "momentum", "adam", "adamw"):
            raise ValueError(f"unknown optimizer {kind!r}")
        self.kind = kind
        self.steps = 0
        self.weight_decay = any(c.weight_decay != 0 for b in blocks for c in b.cfgs)
        for b in blocks:
            self._init_block(b)
        self.bind(blocks)

    def _init_block(self, b: Block) -> None:
        p0 = b.params[0]
        dev, dtype = p0.device, p0.dtype
        lr = torch.tensor([c.learning_rate for c in b.cfgs], dtype=torch.float64, device=dev)
        wd = torch.tensor([c.weight_decay for c in b.cfgs], dtype=torch.float64, device=dev)

        def col(t: torch.Tensor) -> list[torch.Tensor]:
            return [t.to(dtype).view(-1, 1, 1)]

        st = b.opt_state
        st["lr"] = [lr]
        st["wd"] = col(wd)
        if self.kind in ("sgd", "momentum"):
            st["neg_lr"] = col(-lr)
        elif self.kind == "adamw":
            st["decay"] = col(1 - lr * wd)  # Python's ``1 - lr * weight_decay``, per trial
        if self.kind in ("adam", "adamw"):
            st["exp_avg"] = [torch.zeros_like(p) for p in b.params]
            st["exp_avg_sq"] = [torch.zeros_like(p) for p in b.params]

    def bind(self, blocks: list[Block]) -> None:
        """Flat lists over the pack's blocks (after construction and after trials left)."""
        self.blocks = blocks
        self.params = [p for b in blocks for p in b.params]
        keys = {k for b in blocks for k in b.opt_state}
        self.state = {k: [t for b in blocks for t in b.opt_state[k]] for k in keys & _PER_PARAM}
        # A block-level [K,1,1] tensor repeated for each of the block's parameters.
        self.hyper = {k: [b.opt_state[k][0] for b in blocks for _ in b.params] for k in keys & _PER_TRIAL}
        self.lr = torch.cat([b.opt_state["lr"][0] for b in blocks]) if blocks else None
        self.rows = [(b.K, len(b.params)) for b in blocks]
        if self.params:
            p0 = self.params[0]
            self.eps = torch.full((), EPS, dtype=p0.dtype, device=p0.device)

    @torch.no_grad()
    def step(self, grads: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> None:
        self.steps += 1
        params = self.params
        grads = list(grads)
        if self.kind in ("sgd", "momentum"):
            if self.weight_decay:
                grads = torch._foreach_addcmul(grads, params, self.hyper["wd"])
            if self.kind == "momentum":
                if self.steps == 1:
                    it = iter(grads)
                    for b in self.blocks:
                        b.opt_state["buf"] = [next(it).clone() for _ in b.params]
                    self.state["buf"] = [t for b in self.blocks for t in b.opt_state["buf"]]
                else:
                    torch._foreach_mul_(self.state["buf"], MOMENTUM)
                    torch._foreach_add_(self.state["buf"], grads)  # dampening 0: add(grad, alpha=1)
                grads = self.state["buf"]
            torch._foreach_addcmul_(params, grads, self.hyper["neg_lr"])
            return

        if self.weight_decay:
            if self.kind == "adamw":
                torch._foreach_mul_(params, self.hyper["decay"])
            else:
                grads = torch._foreach_addcmul(grads, params, self.hyper["wd"])
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        torch._foreach_lerp_(exp_avg, grads, 1 - BETA1)
        torch._foreach_mul_(exp_avg_sq, BETA2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - BETA2)
        step = float(self.steps)
        bias_correction1 = 1 - BETA1**step
        bias_correction2_sqrt = (1 - BETA2**step) ** 0.5
        # denom = sqrt(v) / bc2_sqrt + eps, as addcdiv: eps + (1 * sqrt(v)) / bc2_sqrt rounds alike.
        n = len(params)
        bc2 = torch.full((), bias_correction2_sqrt, dtype=params[0].dtype, device=params[0].device)
        denom = torch._foreach_addcdiv([self.eps] * n, torch._foreach_sqrt(exp_avg_sq), [bc2] * n)
        # step_k = lr_k / bias_correction1 in float64 (as Python computes it), then the dtype.
        neg_step = (self.lr / bias_correction1).neg_().to(params[0].dtype)
        per_param: list[torch.Tensor] = []
        start = 0
        for k, n_params in self.rows:
            per_param += [neg_step[start : start + k].view(-1, 1, 1)] * n_params
            start += k
        # param.addcdiv_(m, denom, value=-step): the kernel computes param + (-step * m) / denom.
        torch._foreach_addcdiv_(params, torch._foreach_mul(exp_avg, per_param), denom)


# Optimizer entries with one value per trial ([K,1,1]), and those with one tensor per parameter.
_PER_TRIAL = {"wd", "neg_lr", "decay"}
_PER_PARAM = {"exp_avg", "exp_avg_sq", "buf"}
