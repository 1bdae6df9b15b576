"""The ``gridsweep`` command line (``app.cli.main:main``; ``python -m app.cli``).

The one package of ``app`` that may import ``worker``: it starts workers and loads models.
"""
