"""gridsweep: hyperparameter grid search for PyTorch MLPs — the torch-free core.

Both sides stand on this package: the API (``app``) and the workers (``worker``) take
from it the trial vocabulary (``gridsweep.vocab``), the built-in datasets and the split
(``gridsweep.datasets``), the dataset payload codec (``gridsweep.payload``), the HTTP
client (``gridsweep.client``), logging (``gridsweep.logs``) and the typed claimed trial
(``gridsweep.claims``). It imports nothing of ``app`` or ``worker``, and no torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:  # the one version string: the installed package's metadata (pyproject.toml)
    __version__ = version("gridsweep")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
