"""gridsweep's service side: the API, the SQL store, the dashboard and the command line (``app.cli``)."""

from gridsweep import __version__

__all__ = ["__version__"]
