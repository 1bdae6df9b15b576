"""How local workers (`gridsweep run`, `up`) share the machine's cores."""

from __future__ import annotations

import os

import torch

from app.cli.local import local_threads
from worker.loop import Worker


def test_local_workers_share_the_usable_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    assert local_threads(1) == cores
    assert local_threads(2) == max(1, cores // 2)
    assert local_threads(cores + 1) == 1 and local_threads(0) == cores


def test_worker_takes_torch_threads_and_pack_parts_apart() -> None:
    """`gridsweep run`: one torch thread for trials trained alone, a part per core for packs."""
    before = torch.get_num_threads()
    try:
        w = Worker("http://127.0.0.1:9", device="cpu", pack_size="auto", threads=1, pack_threads=3)
        assert torch.get_num_threads() == 1 and w.pack_threads == 3 and w.pack_size > 1
        w = Worker("http://127.0.0.1:9", device="cpu", threads=2)  # `gridsweep worker --threads 2`
        assert torch.get_num_threads() == 2 and w.pack_threads == 2
    finally:
        torch.set_num_threads(before)
