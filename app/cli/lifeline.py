"""A child process of ``gridsweep run`` / ``up`` stops when its parent is gone, however it went.

The parent stops its children in order when it is interrupted or killed politely (SIGINT,
SIGTERM, a closed terminal). A SIGKILL (an OOM kill, ``kill -9``, a CI job's timeout) gives it
no chance to: its workers would train on as orphans, for up to the API client's retry time
(10 minutes) against an API that died with the parent. So each child holds the read end of a
pipe whose only write end is the parent's (``child_lifeline``). The kernel closes that end when
the parent exits, for any reason; the child's watcher (``watch_lifeline``, started by every
``gridsweep`` command) then reads end-of-file and sends its own process SIGTERM: a worker stops
within a step and releases what it can, a server shuts down, as when the parent stops them.
"""

from __future__ import annotations

import os
import signal
import stat
import threading

LIFELINE_ENV = "GRIDSWEEP_LIFELINE_FD"
# The write ends this process holds for its children: open until it exits (never written to).
_HELD: list[int] = []


def child_lifeline() -> tuple[int, dict[str, str]]:
    """A new lifeline: the read end to pass to one child (``pass_fds``; the caller closes its
    copy once the child started) and the environment that tells the child which fd it is."""
    read, write = os.pipe()  # both non-inheritable: no other child gets this write end
    _HELD.append(write)
    return read, {LIFELINE_ENV: str(read)}


def watch_lifeline() -> None:
    """In a child given a lifeline: SIGTERM to itself once the parent is gone. The variable is
    taken out of the environment, so this process's own children do not look for the fd."""
    value = os.environ.pop(LIFELINE_ENV, None)
    if value is None or not value.isdigit() or int(value) <= 2:
        return
    fd = int(value)
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return  # not the pipe a parent passed (a stale variable): nothing to watch
    except OSError:
        return

    def _watch() -> None:
        try:
            while os.read(fd, 1):  # nothing is ever written: returns b"" once the parent is gone
                pass
        except OSError:
            return
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=_watch, name="lifeline", daemon=True).start()
