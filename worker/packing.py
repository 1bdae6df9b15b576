"""Which trials train together: pack sizes, blocks inside a pack, memory limits.

A *pack* is what a worker claims and trains in one fused loop: trials of one sweep
with the same ``pack_key`` (dataset, split, batch size, epochs, optimizer, loss: the
API groups claims by it). Inside a pack, trials are stacked in *blocks*: one per
exact architecture (activation + widths), or several architectures of one
activation padded to the largest. Blocks of a pack run in lockstep (one batch, one
backward, one optimizer step for all), so a block costs a little dispatch time per
step and padding costs wasted FLOPs; ``plan_blocks`` weighs the two.

Reproducibility: every hidden width is padded to its *canonical* width (a multiple of
``WIDTH_MULTIPLE``), a function of the trial alone, and on a CPU the worker's mode
(``auto``) only stacks trials of one canonical architecture, so a trial's numbers do not
depend on the pack it trained in (see worker/fused.py).

Pure: plain Python (torch only to look at a device).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

from gridsweep.vocab import TrialConfig

MAX_PACK_SIZE = 1024  # the API's claim limit
# ``--pack-size auto``: CPU packs are bounded by cache and by how long a worker keeps
# trials from others; a GPU needs many trials per step to leave its launch overhead behind.
AUTO_PACK_SIZE = {"cpu": 64, "cuda": 512}
# A block's fixed cost per step in FLOP-equivalents per batch row (dispatch time x
# throughput / batch): ~0.15 ms at ~80 GFLOP/s on a CPU (measured); ~0.2 ms of kernel launches
# at ~20 TFLOP/s on a GPU, which therefore merges (pads) far more eagerly.
BLOCK_OVERHEAD_FLOPS_PER_ROW = {"cpu": 5e4, "cuda": 1.5e7}
PACKING_MODES = ("auto", "group", "pad", "pad_all")
# CPU: a block's activations per layer ([K, batch, width]) are kept to about this many bytes,
# so a step's elementwise passes (activation and its gradient, bias sums) run in a core's L2
# cache rather than at L3/memory bandwidth: an architecture of more trials is cut into blocks of
# near-equal K. Measured on an AMD EPYC (1 MiB L2 per core): torch's tanh_backward on [K, 256,
# 128] float32 runs 0.29 ns/element at K = 4 (0.5 MiB) and 0.91 at K = 16 (2 MiB). On the whole
# public grid in two parts the gain is within that machine's noise (an interleaved A/B: ~7 %;
# bench/fused.py's uncut "group" row as fast; bench/README.md, session 8).
BLOCK_CACHE_BYTES = 1 << 20
# Hidden widths are padded up to a multiple of this (``canonical_width``). A CPU elementwise
# kernel runs SIMD steps of two vectors (32 float32 with AVX-512, 16 with AVX2; fewer float64)
# and finishes the last ``numel % step`` elements with scalar code, whose exp/log/erf round
# differently: with whole multiples of 32 per trial and row, no element of any trial is ever
# in that remainder, whatever the block's K or the batch's rows.
WIDTH_MULTIPLE = 32


def canonical_width(width: int) -> int:
    """``width`` rounded up to a multiple of ``WIDTH_MULTIPLE`` (the padded units stay exactly zero)."""
    return -(-width // WIDTH_MULTIPLE) * WIDTH_MULTIPLE


def canonical_widths(cfg: TrialConfig) -> tuple[int, ...]:
    """The hidden widths ``cfg`` trains at: its own, each padded to ``canonical_width``."""
    return tuple(canonical_width(w) for w in cfg.hidden_units)


def parse_pack_size(value: Any) -> int | None:
    """``auto`` (or None) -> None; otherwise an int in ``[1, MAX_PACK_SIZE]``."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"pack size must be 'auto' or an integer, got {value!r}") from None
    if not 1 <= n <= MAX_PACK_SIZE:
        raise ValueError(f"pack size must be between 1 and {MAX_PACK_SIZE}, got {n}")
    return n


def auto_pack_size(device_type: str) -> int:
    return AUTO_PACK_SIZE.get(device_type, AUTO_PACK_SIZE["cpu"])


def padded_widths(cfgs: Sequence[TrialConfig]) -> list[int]:
    """Hidden widths of a block holding ``cfgs``: per layer the largest canonical width when
    all have the same depth; else one width (the largest) for all, since a shallow trial
    passes its last hidden activation through the deeper layers."""
    depth = max(c.layers for c in cfgs)
    widths = [canonical_widths(c) for c in cfgs]
    if all(c.layers == depth for c in cfgs):
        return [max(w[layer] for w in widths) for layer in range(depth)]
    return [max(w for ws in widths for w in ws)] * depth


def matmul_flops(dims: Sequence[int], train: bool = True) -> int:
    """Matmul FLOPs per row through ``dims[0] -> ... -> dims[-1]``: forward (2/weight) or a
    training step (forward + weight gradient + input gradient, none for the first layer)."""
    total = 0
    for layer, (i, o) in enumerate(itertools.pairwise(dims)):
        total += (2 if not train else 4 if layer == 0 else 6) * i * o
    return total


def block_cost(cfgs: Sequence[TrialConfig], n_features: int, n_outputs: int, overhead: float) -> float:
    return overhead + len(cfgs) * matmul_flops([n_features, *padded_widths(cfgs), n_outputs])


def plan_blocks(
    cfgs: Sequence[TrialConfig],
    n_features: int,
    n_outputs: int,
    mode: str = "auto",
    device: Any = "cpu",
    dtype_bytes: int = 4,
) -> list[list[int]]:
    """Positions of ``cfgs`` grouped into blocks.

    ``group``: one block per canonical architecture (activation, canonical widths): every
    trial computes at its own canonical shapes, so its numbers do not depend on its pack.
    ``auto`` on a CPU: ``group``, each architecture's trials cut into blocks of near-equal K
    whose activations fit ``BLOCK_CACHE_BYTES`` (``cache_sized``; which trials share a block
    changes nothing of their numbers). On a GPU (where nothing is exact across packs, and a block
    costs many kernel launches) the groups of one activation, in order of depth and width,
    merged while the padded block is estimated cheaper than the two apart. ``pad``: one block
    per activation and depth (widths padded); ``pad_all``: one block per activation (widths
    and depths padded): a trial then computes at its block's widths, which its results may
    depend on (to round-off); for benchmarks.

    (Merging depths at one canonical width would be exact too, a shallow trial passing its
    activation through the deeper layers, but it measured ~10 % slower on the benchmark grid.)
    """
    if mode not in PACKING_MODES:
        raise ValueError(f"unknown packing mode {mode!r} (use one of {', '.join(PACKING_MODES)})")
    groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    for i, c in enumerate(cfgs):
        groups.setdefault((c.activation, canonical_widths(c)), []).append(i)
    device_type = getattr(device, "type", str(device).split(":")[0])
    if mode == "group":
        return list(groups.values())
    if mode == "auto" and device_type != "cuda":
        return [piece for ids in groups.values() for piece in cache_sized(ids, cfgs[ids[0]], dtype_bytes)]
    by_act: dict[Any, list[list[int]]] = {}
    for (act, widths), ids in groups.items():
        by_act.setdefault((act, len(widths)) if mode == "pad" else act, []).append(ids)
    if mode in ("pad", "pad_all"):
        return [list(itertools.chain.from_iterable(gs)) for gs in by_act.values()]
    overhead = BLOCK_OVERHEAD_FLOPS_PER_ROW.get(device_type, BLOCK_OVERHEAD_FLOPS_PER_ROW["cpu"])

    def cost(ids: list[int]) -> float:
        return block_cost([cfgs[i] for i in ids], n_features, n_outputs, overhead)

    blocks: list[list[int]] = []
    for gs in by_act.values():
        gs = sorted(gs, key=lambda ids: (cfgs[ids[0]].layers, max(cfgs[ids[0]].hidden_units)))
        cur = gs[0]
        for ids in gs[1:]:
            if cost(cur + ids) <= cost(cur) + cost(ids):
                cur = cur + ids
            else:
                blocks.append(cur)
                cur = ids
        blocks.append(cur)
    return blocks


def cache_sized(ids: list[int], cfg: TrialConfig, dtype_bytes: int = 4) -> list[list[int]]:
    """One architecture's trials (``ids``, whose config is like ``cfg``) in near-equal
    consecutive blocks of at most ``BLOCK_CACHE_BYTES`` of activations per layer each."""
    per_trial = cfg.batch_size * max(canonical_widths(cfg)) * dtype_bytes
    k_max = max(1, BLOCK_CACHE_BYTES // per_trial)
    n = -(-len(ids) // k_max)
    size, extra = divmod(len(ids), n)
    out, start = [], 0
    for j in range(n):
        stop = start + size + (j < extra)
        out.append(ids[start:stop])
        start = stop
    return out


def pack_bytes_per_trial(
    cfgs: Sequence[TrialConfig], n_features: int, n_outputs: int, dtype_bytes: int = 4
) -> int:
    """A generous estimate of one trial's training memory in a pack of ``cfgs`` (at the
    pack's padded widths): parameters with gradient, optimizer state and temporaries
    (x6), and one batch's saved activations and their gradients (x6)."""
    dims = [n_features, *padded_widths(cfgs), n_outputs]
    params = sum(i * o + o for i, o in itertools.pairwise(dims))
    acts = max(c.batch_size for c in cfgs) * sum(dims[1:])
    return (6 * params + 6 * acts) * dtype_bytes


def memory_budget(device: Any) -> int:
    """Bytes a pack may use: half of what is free on the device (CPU: MemAvailable)."""
    device_type = getattr(device, "type", str(device).split(":")[0])
    if device_type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 4


def split_for_memory(
    cfgs: Sequence[TrialConfig], n_features: int, n_outputs: int, budget: int, dtype_bytes: int = 4
) -> list[list[int]]:
    """Consecutive runs of ``cfgs`` (positions) that fit ``budget`` bytes, each at least one trial."""
    per = pack_bytes_per_trial(cfgs, n_features, n_outputs, dtype_bytes)
    size = max(1, budget // max(1, per))
    return [list(range(s, min(s + size, len(cfgs)))) for s in range(0, len(cfgs), size)]


# Elementwise work per hidden unit and batch row of a training step (bias, activation forward
# and backward, Adam's share is per parameter and left out), in the FLOP-equivalents of
# ``BLOCK_OVERHEAD_FLOPS_PER_ROW``: fitted to relu against tanh parts of the quick grid on an
# AVX-512 CPU (2.14 s against 2.54 s for the same shapes); the other activations, not measured,
# are taken as tanh (their kernels are transcendental too).
ELEMENTWISE_FLOPS_PER_UNIT = {"relu": 100.0, "leaky_relu": 100.0}
ELEMENTWISE_FLOPS_DEFAULT = 250.0


def split_for_threads(
    cfgs: Sequence[TrialConfig], n: int, n_features: int = 16, n_outputs: int = 1
) -> list[list[int]]:
    """``cfgs`` (positions) in ``n`` parts of near-equal estimated cost, one per CPU thread.

    An architecture's trials stay together where the balance allows: a block's step costs a
    fixed ~0.15 ms of dispatch whatever its size, so an architecture cut in two pays it twice.
    Dealing every architecture across the parts (the rule before) made 2 parts slower than one
    part on 2 torch threads on an AVX-512 CPU (11.0 against 16.2 trials/s on the quick grid,
    blocks of 2 trials instead of 4). So: an architecture costing more than a part's share is cut
    into that many near-equal chunks, then the chunks go, costliest first, to the part with the
    least work (LPT). Which trials share a block changes nothing of their numbers (canonical
    shapes, see worker/fused.py); only how long the pack takes.
    """
    groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    for i, c in enumerate(cfgs):
        groups.setdefault((c.activation, canonical_widths(c)), []).append(i)
    overhead = BLOCK_OVERHEAD_FLOPS_PER_ROW["cpu"]

    def cost(ids: list[int]) -> float:
        c = cfgs[ids[0]]  # one architecture: one activation, one set of widths
        per_unit = ELEMENTWISE_FLOPS_PER_UNIT.get(c.activation, ELEMENTWISE_FLOPS_DEFAULT)
        units = sum(canonical_widths(c))
        elementwise = len(ids) * per_unit * units
        return block_cost([cfgs[i] for i in ids], n_features, n_outputs, overhead) + elementwise

    n = max(1, min(n, len(cfgs)))
    share = sum(cost(ids) for ids in groups.values()) / n
    chunks: list[list[int]] = []
    for ids in groups.values():
        pieces = min(len(ids), max(1, round(cost(ids) / share))) if share > 0 else 1
        chunks.extend(ids[j::pieces] for j in range(pieces))
    parts: list[list[int]] = [[] for _ in range(n)]
    loads = [0.0] * n
    for chunk in sorted(chunks, key=cost, reverse=True):
        j = loads.index(min(loads))
        parts[j].extend(chunk)
        loads[j] += cost(chunk)
    return [sorted(p) for p in parts if p]
