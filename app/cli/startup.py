"""How gridsweep's processes start: heavy imports without the cyclic GC, numpy's BLAS on one thread.

Both are about the fixed cost of a local sweep (issue 15): a ``gridsweep run`` of a few seconds
waits, before its first claim, on its worker's import of torch, and its training parts share
the machine's cores with everything else these processes do.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections.abc import Iterator

log = logging.getLogger("gridsweep.startup")


@contextlib.contextmanager
def heavy_imports() -> Iterator[None]:
    """Import torch, the API or Alembic with the cyclic GC paused, then freeze what they built.

    An import allocates objects by the hundred thousand, and every 700 allocations start a
    collection: torch's import alone runs ~380 of them (2 over the whole heap), and pausing them
    took it from 1.83 to 1.62 s (8 interleaved pairs on the 2-core machine). Modules, classes
    and functions live as long as the process, so those collections find next to nothing.
    Afterwards ``gc.freeze()`` moves everything made so far out of every later collection: the
    API's and the worker's own collections then visit only what they made since. The cost: the
    few cyclic leftovers of the imports (~6,000 objects after torch's) are never freed.
    """
    if not gc.isenabled():  # nested, or paused by the caller: theirs to resume
        yield
        return
    gc.disable()
    started = time.perf_counter()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
        log.debug(
            "imports took %.2fs with the GC paused; %d objects frozen",
            time.perf_counter() - started,
            gc.get_freeze_count(),
        )


def one_blas_thread() -> None:
    """numpy's BLAS on one thread in this process and the processes it starts, unless set.

    numpy only prepares data here (generators, splits, standardizing; torch's matmuls run
    on MKL and OpenMP, which this leaves alone), and OpenBLAS's threads busy-wait after each
    call: in a worker of a 7 s local sweep one of them spun for 0.15 s of CPU, on the cores
    its training parts use. Takes effect only before numpy is imported (``cli`` calls it first).
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
