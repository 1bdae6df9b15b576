"""The command line's one exit-code table: every ``gridsweep`` command exits with one of these
(documented in ``--help`` and the README). A bad spec or request is 2 whichever command sent
it, an unreachable API or a refused token is 3. No imports: ``gridsweep``'s start reads it.
"""

from __future__ import annotations

EXIT_OK = 0  # done; for `submit`: the sweep succeeded and the gate (if any) was met
EXIT_MISSED = 1  # the gate was missed, the sweep failed or was canceled, or another error
EXIT_USAGE = 2  # invalid spec, request or usage
EXIT_UNREACHABLE = 3  # server unreachable, or authentication refused
EXIT_TIMEOUT = 4  # --timeout reached before the sweep ended
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): the sweep itself goes on

EXIT_CODES = {
    EXIT_OK: "the sweep succeeded and the gate (if any) was met",
    EXIT_MISSED: "the gate was missed, or the sweep failed or was canceled",
    EXIT_USAGE: "invalid spec or usage, or no such sweep, trial or dataset",
    EXIT_UNREACHABLE: "server or database unreachable, or authentication refused",
    EXIT_TIMEOUT: "--timeout reached before the sweep ended",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C) while waiting; the sweep goes on",
}
EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())
