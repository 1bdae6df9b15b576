"""The vocabulary of a trial, shared by spec validation (API) and training (worker).

Pure: no torch, no database, no HTTP. The API validates a spec against these
names; the worker turns a claimed trial's params into a ``TrialConfig``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "leaky_relu", "elu", "silu")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
# Losses by the task they fit; ``auto`` is resolved against the dataset's task.
REGRESSION_LOSSES = ("mse", "mae", "huber")
CLASSIFICATION_LOSSES = ("bce", "cross_entropy")
LOSSES = ("auto", *REGRESSION_LOSSES, *CLASSIFICATION_LOSSES)
TASKS = ("classification", "regression")


def device_name(spec: str | None) -> str:
    """A device name, checked without torch: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (lower case).
    Whether the device exists is the worker's to say (``worker.train.select_device``)."""
    name = (spec or "auto").strip().lower()
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")


# The metrics every trial records per epoch on the validation split, by task: the trial's own
# loss (val_loss) and metrics that are the same whatever its loss. Regression rmse/mae are in
# the TARGET'S OWN UNITS (the standardization undone), r2 is scale free; classification
# log_loss is the cross-entropy of the predicted class probabilities (natural log, mean over
# rows). ``train_loss`` is recorded too (the mean training loss of the epoch).
METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "regression": ("val_loss", "val_rmse", "val_mae", "val_r2"),
    "classification": ("val_loss", "val_error", "val_accuracy", "val_log_loss"),
}
# Their twins on the held-out test split (the final evaluation): test_loss, test_rmse, ...
TEST_METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    task: tuple("test_" + m.removeprefix("val_") for m in names) for task, names in METRICS_BY_TASK.items()
}
_MAXIMIZED = ("accuracy", "r2")
_UNITS = {
    "loss": "the trial's loss",
    "rmse": "target units",
    "mae": "target units",
    "r2": "fraction of variance",
    "error": "fraction",
    "accuracy": "fraction",
    "log_loss": "nats",
}
_ALL_METRICS = (
    "train_loss",
    *dict.fromkeys(m for names in (*METRICS_BY_TASK.values(), *TEST_METRICS_BY_TASK.values()) for m in names),
)
# "minimize" | "maximize" for every metric name above (accuracy and r2 are maximized).
METRIC_GOALS: dict[str, str] = {
    m: "maximize" if m.split("_", 1)[1] in _MAXIMIZED else "minimize" for m in _ALL_METRICS
}
# What each metric's numbers are in (for reports: "RMSE 2.31, target units").
METRIC_UNITS: dict[str, str] = {m: _UNITS[m.split("_", 1)[1]] for m in _ALL_METRICS}
GOALS = ("minimize", "maximize")
SELECT_EPOCHS = ("best", "last")
REGRESSION_METRICS = METRICS_BY_TASK["regression"][1:]  # val_rmse, val_mae, val_r2
# Metrics that only mean something for classification: val_error, val_accuracy, val_log_loss.
CLASSIFICATION_METRICS = METRICS_BY_TASK["classification"][1:]
METRICS = ("val_loss", *CLASSIFICATION_METRICS, *REGRESSION_METRICS)
# The metric a sweep ranks by when its spec names none; val_error ties go to val_log_loss.
DEFAULT_METRIC = {"regression": "val_rmse", "classification": "val_error"}
TIE_BREAKS = {"val_error": "val_log_loss"}
# The one list of metric columns: every number a trial records per epoch (and keeps for its
# selected epoch), and its twins on the test split.
EPOCH_METRICS = ("train_loss", *METRICS)
TEST_METRICS = tuple("test_" + m.removeprefix("val_") for m in METRICS)
_LABELS = {
    "loss": "loss",
    "error": "error",
    "accuracy": "accuracy",
    "log_loss": "log loss",
    "rmse": "RMSE",
    "mae": "MAE",
    "r2": "R2",
}
METRIC_LABELS: dict[str, str] = {m: _LABELS[m.split("_", 1)[1]] for m in METRIC_GOALS}


def metric_text(name: str, value: float | None, digits: int = 4) -> str:
    """``val_rmse, 2.31`` -> ``RMSE 2.31 (target units)``: a metric's value for people."""
    label = METRIC_LABELS.get(name, name)
    units = METRIC_UNITS.get(name)
    shown = "-" if value is None else f"{value:.{digits}g}"
    return f"{label} {shown}" + (f" ({units})" if units else "")


def metric_units(name: str) -> str:
    """``val_rmse`` -> ``RMSE, target units`` (a column header's note); ``val_loss`` -> its units."""
    units = METRIC_UNITS.get(name)
    if units is None:
        return name
    label = METRIC_LABELS.get(name, name)
    return units if label == "loss" else f"{label}, {units}"


def rule_text(metric: dict[str, Any]) -> str:
    """How a sweep ranks, from the API's ``metric`` object: units, tie-break, epoch rule."""
    name = metric["name"]
    text = f"ranked by {name} ({metric_units(name)}, {metric.get('goal', 'minimize')})"
    if metric.get("tie_break"):
        text += f", ties broken by {metric['tie_break']}"
    which = "last" if metric.get("select_epoch") == "last" else "best"
    text += f"; each trial scored at its {which} epoch"
    es = metric.get("early_stopping")
    if es:
        delta = es.get("min_delta") or 0
        text += f"; early stopping after {es['patience']} epochs without an improvement of {delta:g}"
    return text


# Momentum used by the ``momentum`` optimizer (SGD with heavy-ball momentum).
MOMENTUM = 0.9


def resolve_loss(loss: str, task: str, n_classes: int) -> str:
    """Return the concrete loss for ``loss`` on a task, or raise ``ValueError``."""
    if loss == "auto":
        if task == "regression":
            return "mse"
        return "bce" if n_classes == 2 else "cross_entropy"
    if task == "regression" and loss not in REGRESSION_LOSSES:
        raise ValueError(
            f"loss {loss!r} does not fit a regression task (use one of {', '.join(REGRESSION_LOSSES)})"
        )
    if task == "classification" and loss not in CLASSIFICATION_LOSSES:
        raise ValueError(
            f"loss {loss!r} does not fit a classification task "
            f"(use one of {', '.join(CLASSIFICATION_LOSSES)})"
        )
    if loss == "bce" and n_classes != 2:
        raise ValueError(f"loss 'bce' needs exactly 2 classes, the dataset has {n_classes}")
    return loss


@dataclass(frozen=True)
class TrialConfig:
    """Everything that decides how one MLP is trained, already validated.

    ``hidden_units`` is one width per hidden layer (len == layers).
    ``loss`` is concrete (never ``auto``).
    """

    layers: int
    hidden_units: tuple[int, ...]
    activation: str
    learning_rate: float
    optimizer: str
    batch_size: int
    epochs: int
    dropout: float
    weight_decay: float
    loss: str
    seed: int

    @classmethod
    def from_params(cls, params: dict[str, Any], seed: int, task: str, n_classes: int) -> TrialConfig:
        """Build a config from a trial's resolved params (as stored by the API)."""
        layers = int(params["layers"])
        hu = params["hidden_units"]
        widths = tuple(int(w) for w in hu) if isinstance(hu, list | tuple) else (int(hu),) * layers
        if len(widths) != layers:
            raise ValueError(f"hidden_units {list(widths)} has {len(widths)} widths for {layers} layers")
        return cls(
            layers=layers,
            hidden_units=widths,
            activation=str(params["activation"]),
            learning_rate=float(params["learning_rate"]),
            optimizer=str(params["optimizer"]),
            batch_size=int(params["batch_size"]),
            epochs=int(params["epochs"]),
            dropout=float(params["dropout"]),
            weight_decay=float(params["weight_decay"]),
            loss=resolve_loss(str(params["loss"]), task, n_classes),
            seed=int(seed),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_units"] = list(self.hidden_units)
        return d
