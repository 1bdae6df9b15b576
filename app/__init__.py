"""gridsweep: hyperparameter grid search for PyTorch MLPs."""

__version__ = "0.1.0"
