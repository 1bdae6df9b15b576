"""gridsweep: hyperparameter grid search for PyTorch MLPs — the torch-free core and the Python API.

``import gridsweep`` is the public Python API (``gridsweep.api``, loaded on first use):
``Client``, ``Sweep`` and the errors ``GridsweepError``, ``SpecError``, ``NotFound``,
``Conflict``, ``Unreachable``. Both sides of the service also stand on this package: the API
(``app``) and the workers (``worker``) take from it the trial vocabulary (``gridsweep.vocab``),
the built-in datasets and the split (``gridsweep.datasets``), the dataset payload codec
(``gridsweep.payload``), the HTTP client (``gridsweep.client``), logging (``gridsweep.logs``),
the typed claimed trial (``gridsweep.claims``), spec files (``gridsweep.specfile``) and the
trial table layout (``gridsweep.tables``). It imports nothing of ``app`` or ``worker``, and no torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:  # the one version string: the installed package's metadata (pyproject.toml)
    __version__ = version("gridsweep")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

PUBLIC = ("Client", "Sweep", "GridsweepError", "SpecError", "NotFound", "Conflict", "Unreachable")
__all__ = ["__version__", *PUBLIC]


def __getattr__(name: str) -> Any:
    # Late: the workers and the API import gridsweep's modules without the client's (httpx).
    if name in PUBLIC:
        from gridsweep import api

        return getattr(api, name)
    raise AttributeError(f"module 'gridsweep' has no attribute {name!r}")
