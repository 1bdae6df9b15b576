"""Workers on other "hosts": network namespaces joined by veth pairs to a bridge, one link cut.

The root namespace is the API host: PostgreSQL (127.0.0.1) and ``gridsweep serve`` bound to
the bridge's address only. Two namespaces the test makes are worker hosts, each with one
veth to that bridge and no other route: a worker there reaches the API by its address with a
worker token, nothing else. Mid-sweep the link of one worker host goes down (its bridge port:
the cable is pulled, packets vanish). Its trials must be re-run on the other host once their
leases expire, nothing lost or recorded twice; when the link comes back, that host's late
writes are refused (fenced by the lease token) and the recorded results stay the other
worker's. Names and subnets are unique per run, and everything is removed at the end.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.cli.local import free_port, stop_all, wait_healthy
from tests.conftest import cli_env, require
from tests.robust_helpers import (
    FAST_LEASES,
    bearer,
    duplicated_epoch_rows,
    epoch_rows_of_final_attempts,
    log_text,
    logged_statuses,
    make_tokens,
    spec,
    sweep,
    trial_rows,
    wait_for,
)

pytestmark = pytest.mark.slow

N_TRIALS = 16
EPOCHS = 60
PACK_SIZE = "2"


def ip(*args: str) -> str:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def netns_usable() -> bool:
    """`ip netns` works here (root, a kernel that allows it): make and remove a probe namespace."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        return False
    probe = f"gsprobe-{uuid.uuid4().hex[:8]}"
    try:
        ip("netns", "add", probe)
    except (RuntimeError, OSError):
        return False
    ip("netns", "del", probe)
    return True


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.231.0.0/16 that no interface or route here uses."""
    used = ip("-4", "addr") + ip("-4", "route")
    for _ in range(100):
        net = ipaddress.ip_network(f"10.231.{random.randint(1, 254)}.0/24")
        if f"10.231.{net.network_address.packed[2]}." not in used:
            return net
    raise RuntimeError("no free 10.231.x.0/24 subnet")


@dataclass
class Hosts:
    """A bridge in the root namespace (the API host) and one namespace per worker host."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    net: ipaddress.IPv4Network = field(default_factory=free_subnet)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # root-side veth ends (bridge ports)

    @property
    def bridge(self) -> str:
        return f"gs{self.tag}br"

    def address(self, i: int) -> str:
        return str(self.net.network_address + i)

    def up(self, n_workers: int) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.address(1)}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i in range(1, n_workers + 1):
            ns, root_end, host_end = f"gs{self.tag}w{i}", f"gs{self.tag}r{i}", f"gs{self.tag}h{i}"
            ip("netns", "add", ns)
            self.namespaces.append(ns)
            ip("link", "add", root_end, "type", "veth", "peer", "name", host_end, "netns", ns)
            self.links.append(root_end)
            ip("link", "set", root_end, "master", self.bridge)
            ip("link", "set", root_end, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{self.address(1 + i)}/24", "dev", host_end)
            ip("-n", ns, "link", "set", host_end, "up")

    def down(self) -> None:
        for link in self.links:  # deleting one end of a veth pair deletes both
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    def leftovers(self) -> list[str]:
        names = ip("netns", "list") + ip("link")
        return [n for n in [*self.namespaces, *self.links, self.bridge] if re.search(rf"\b{n}\b", names)]


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    require(netns_usable(), "network namespaces (`ip netns` as root)")
    h = Hosts()
    try:
        h.up(2)
        yield h
    finally:
        h.down()
        assert h.leftovers() == [], "namespaces or links left behind"


def start(
    cmd: list[str], log: Path, env: dict[str, str], netns: str | None = None
) -> subprocess.Popen[bytes]:
    prefix = ["ip", "netns", "exec", netns] if netns else []  # `ip netns exec` execs: the same pid
    with open(log, "wb") as out:
        return subprocess.Popen([*prefix, *cmd], env=env, stdout=out, stderr=subprocess.STDOUT)


def test_workers_on_other_hosts_a_cut_link_is_fenced(hosts: Hosts, pg_only_url: str, tmp_path: Path) -> None:
    tokens = make_tokens(pg_only_url, adm="admin", w="worker")
    api_addr = hosts.address(1)
    port = free_port(api_addr)
    url = f"http://{api_addr}:{port}"
    settings = {f"GRIDSWEEP_{k.upper()}": v for k, v in {**FAST_LEASES, "max_attempts": "8"}.items()}
    gridsweep = [sys.executable, "-m", "app.cli"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # The API host: bound to the bridge's address only (auth on, as off loopback it must be).
        api = start(
            [
                *gridsweep,
                "serve",
                "--db",
                pg_only_url,
                "--host",
                api_addr,
                "--port",
                str(port),
                "--no-upgrade",
            ],
            tmp_path / "api.log",
            cli_env(**settings, GRIDSWEEP_AUTH="on"),
        )
        procs.append(api)
        wait_healthy(url, timeout=90, proc=api)
        http = httpx.Client(base_url=url, timeout=30, headers=bearer(tokens["adm"]))
        sid = http.post("/api/v1/sweeps", json=spec("hosts", N_TRIALS, epochs=EPOCHS, batch_size=16)).json()[
            "id"
        ]
        # The worker hosts: only the API's URL and a worker token.
        worker_env = cli_env(GRIDSWEEP_TOKEN=tokens["w"])
        w1, w2 = (
            start(
                [
                    *gridsweep,
                    "worker",
                    "--server",
                    url,
                    "--device",
                    "cpu",
                    "--threads",
                    "1",
                    "--pack-size",
                    PACK_SIZE,
                ],
                tmp_path / f"worker-{i}.log",
                worker_env,
                netns=ns,
            )
            for i, ns in enumerate(hosts.namespaces, start=1)
        )
        procs[:0] = [w1, w2]

        def worker_ids() -> dict[int, str]:
            return {int(w["name"].rsplit("-", 1)[1]): w["id"] for w in http.get("/api/v1/workers").json()}

        ids = wait_for(lambda: (w := worker_ids()) and len(w) == 2 and w, 120, "both workers to register")
        w1_id, w2_id = ids[w1.pid], ids[w2.pid]

        def held_by(wid: str) -> list[int]:
            return [
                t.id for t in trial_rows(pg_only_url, sid) if t.status == "running" and t.worker_id == wid
            ]

        def recorded_by(wid: str) -> int:
            return sum(
                1 for t in trial_rows(pg_only_url, sid) if t.status == "succeeded" and t.worker_id == wid
            )

        # Cut worker host 1's link while it trains a pack (after it has recorded one: it is warm).
        def training() -> bool:  # holding the same pack a moment apart: mid-training, not mid-claim
            if recorded_by(w1_id) < 1 or not (held := held_by(w1_id)):
                return False
            time.sleep(0.2)
            return held_by(w1_id) == held

        wait_for(training, 120, "worker 1 to be training", every=0.05)
        ip("link", "set", hosts.links[0], "down")
        cut_at = time.monotonic()
        time.sleep(0.5)  # a request in flight at the cut lands or not; then host 1 is silent
        held = [t for t in trial_rows(pg_only_url, sid) if t.worker_id == w1_id and t.status == "running"]
        assert held, "worker 1 held nothing when its link went down"
        # What the reaper will do with each (README, attempts): a pack lost whole is queued again
        # without using an attempt, a trial lost alone under its lease uses one.
        pack_of = Counter(t.lease_token for t in held)
        cut = {t.id: t.attempt + (1 if pack_of[t.lease_token] == 1 else 0) for t in held}

        def rerun_elsewhere() -> bool:
            rows = {t.id: t for t in trial_rows(pg_only_url, sid)}
            return all(rows[tid].status == "succeeded" and rows[tid].worker_id == w2_id for tid in cut)

        wait_for(rerun_elsewhere, 90, "worker 2 to re-run worker 1's trials")
        rerun_after = time.monotonic() - cut_at
        ip("link", "set", hosts.links[0], "up")
        refusal = re.compile(r"lease lost, dropping it|refused, the lease was lost")
        wait_for(
            lambda: refusal.search(log_text(tmp_path / "worker-1.log")),
            90,
            "worker 1 to hear its leases are gone",
        )
        deadline = time.monotonic() + 120
        while sweep(http, sid)["status"] not in ("succeeded", "failed", "canceled"):
            assert time.monotonic() < deadline, f"sweep not done: {sweep(http, sid)['counts']}"
            time.sleep(0.5)
        time.sleep(1.0)  # anything else host 1 would still write lands now
        final = sweep(http, sid)
        http.close()
    finally:
        stop_all(procs)

    trials = trial_rows(pg_only_url, sid)
    search = [t for t in trials if t.role == "search"]
    by_id = {t.id: t for t in trials}
    api_log = log_text(tmp_path / "api.log")
    w1_log = log_text(tmp_path / "worker-1.log")
    recorded = Counter(int(m) for m in re.findall(r"trial (\d+) ended \w+, recorded from worker", api_log))
    refused = {int(m) for m in re.findall(r"trial (\d+): lease lost, dropping it", w1_log)} | {
        int(m)
        for batch in re.findall(r"refused, the lease was lost: trials \[([\d, ]+)\]", w1_log)
        for m in batch.split(",")
    }
    print(
        f"\nmulti-host: {N_TRIALS} trials on 2 worker hosts via {url}; cut host 1 holding {sorted(cut)}, "
        f"re-run on host 2 after {rerun_after:.1f}s; host 1's late writes refused for "
        f"{sorted(refused & set(cut))}; sweep {final['status']}"
    )
    assert final["status"] == "succeeded", final
    assert len(search) == N_TRIALS and {t.status for t in search} == {"succeeded"}
    assert all(recorded[t.id] == 1 for t in trials)  # nothing lost, nothing recorded twice
    assert duplicated_epoch_rows(pg_only_url) == 0
    assert all(n == EPOCHS for n in epoch_rows_of_final_attempts(pg_only_url, sid).values())
    for tid, attempt in cut.items():
        assert by_id[tid].worker_id == w2_id and by_id[tid].attempt == attempt
        assert re.search(rf"trial {tid} ended succeeded, recorded from worker {w2_id}", api_log)
        assert not re.search(rf"trial {tid} ended \w+, recorded from worker {w1_id}", api_log)
    assert refused & set(cut), "worker 1's late writes about its cut trials were not refused"
    assert "500" not in logged_statuses(api_log)
