"""A fused trial's training time is its share of the pack's wall time, by its size: the shares
of a pack add up to the pack's time, and a bigger config gets a bigger share (so JUnit cases
and the trials table show each config's own time, not one even split)."""

from __future__ import annotations

import time

import torch

from tests.test_fused import cfg_, easy
from worker.fused import train_pack


def test_shares_follow_size_and_add_up_to_the_packs_time() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfgs = [
            cfg_(hidden_units=(4,), epochs=3),
            cfg_(hidden_units=(256,), epochs=3),
            cfg_(layers=2, hidden_units=(256, 256), epochs=3),
        ]
        started = time.perf_counter()
        results = train_pack(cfgs, easy("reg"), mode="group")  # one block per architecture
        wall = time.perf_counter() - started
    finally:
        torch.set_num_threads(before)
    small, wide, deep = (r.duration_seconds for r in results)
    assert all(r.status == "succeeded" for r in results)
    assert 0 < small < wide < deep
    assert 0.5 * wall < small + wide + deep <= wall
