"""Trackers: a run's curves and settings, mirrored to TensorBoard, Weights & Biases or MLflow.

``--log NAME`` (repeatable) opens one tracker run per fabench run. Every row the run writes
to ``curves.csv`` (per-epoch train, test and validation metrics; per-layer alignment angles
when diagnostics run) is sent to it under the key ``split/metric`` or ``split/metric/layer``
at its optimizer step, and the resolved settings go in as hyper-parameters.

Nothing leaves the machine unless asked: TensorBoard event files go to
``<run folder>/tensorboard``, W&B runs offline in ``<run folder>/wandb`` (``WANDB_MODE``
chooses otherwise), MLflow writes to ``<results>/mlflow.db`` (``MLFLOW_TRACKING_URI`` chooses
another store).

Rows are sent at each checkpoint, so a tracker holds what the checkpoint holds. The tracker
run's id and the last step it received are kept in ``<run folder>/trackers.json``; a run
resumed after a crash continues the same tracker run (TensorBoard: the same folder, events
after that step purged; W&B: the same run id; MLflow: the same run) and first sends the
rows from ``curves.csv`` that the tracker had not received (W&B, which writes from a process of
its own and may lose what it was sent when fabench is killed: every row, of which W&B keeps
those after the last step it has).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import logging
import math
import os
import secrets
import sys
import time
from collections import defaultdict
from pathlib import Path

from fabench.errors import FabenchError
from fabench.train.curves import CurveWriter
from fabench.train.records import atomic_write_bytes, file_lock, open_no_follow
from fabench.train.schema import DONE_STATUSES

TRACKER_STATE = "trackers.json"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
#: The module each tracker needs, which its pyproject extra installs.
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
#: Per-layer rows that locate a layer rather than measure it.
_NOT_MEASURED = {"depth"}


def require_trackers(names) -> None:
    """Fail before training, in one line, if the package of a requested tracker is not installed."""
    for name in names:
        try:
            found = importlib.util.find_spec(PACKAGES[name]) is not None
        except (ImportError, ValueError):  # a package that is present but cannot be imported
            found = False
        if not found:
            raise FabenchError(f"--log {name} needs the {PACKAGES[name]} package; install it with "
                               f"pip install 'fabench[{name}]'", setting="log")


def hyper_parameters(config: dict, run_id: str) -> dict:
    """The resolved settings as flat name -> number, string or bool (lists and mappings as JSON)."""
    flat = {"run_id": run_id}
    for name, value in config.items():
        flat[name] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)
    return flat


def _label(config: dict) -> str:
    return f"{config['rule']} {config['arch']} {config['dataset']} seed {config['seed']}"


class Tracker:
    """One tool's run for one fabench run: opened, fed values by step, closed with the run's status."""

    name = ""
    #: True for a tool that hands values to another process to write: a crash can lose what it
    #: was sent, so a resumed run sends it every step again (the tool drops the steps it has).
    resend_on_resume = False

    def __init__(self, run_dir: Path, config: dict, run_id: str, state: dict) -> None:
        self.run_dir, self.config, self.run_id, self.state = run_dir, config, run_id, state

    @property
    def last_step(self) -> int:
        """The last optimizer step this tracker received (-1: none yet)."""
        return int(self.state.get("step", -1))

    def open(self) -> None:
        raise NotImplementedError

    def log(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self, status: str) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """Event files in ``<run folder>/tensorboard``; settings in the HPARAMS view."""

    name = "tensorboard"

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=self.last_step + 1)
        if "step" not in self.state:  # a new tracker run: its settings once
            metrics = {"test/top1": math.nan, "test/loss": math.nan}
            experiment, start, self._end = hparams(hyper_parameters(self.config, self.run_id), metrics)
            self.writer.file_writer.add_summary(experiment)
            self.writer.file_writer.add_summary(start)

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """A W&B run, offline unless ``WANDB_MODE`` says otherwise, in ``<run folder>/wandb``."""

    name = "wandb"
    resend_on_resume = True  # W&B keeps the steps of a resumed run increasing: it drops those it has

    def open(self) -> None:
        results = Path(self.config["results_dir"]).resolve()
        for variable, folder in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
            os.environ.setdefault(variable, str(results / ".wandb" / folder))  # nothing written outside the results
        import wandb

        self.state.setdefault("id", f"{self.run_id}-{secrets.token_hex(4)}")
        config = self.config
        self.run = wandb.init(
            mode=os.environ.get("WANDB_MODE") or "offline", dir=str(self.run_dir), id=self.state["id"],
            resume="allow", project=os.environ.get("WANDB_PROJECT") or "fabench", group=config["task"],
            name=_label(config), config=hyper_parameters(config, self.run_id), reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status in DONE_STATUSES else 1)


class MlflowTracker(Tracker):
    """An MLflow run in the experiment named after the task, in ``<results>/mlflow.db`` by default."""

    name = "mlflow"

    def open(self) -> None:
        from mlflow.tracking import MlflowClient

        for logger in ("mlflow", "alembic"):  # table creation and migration notes are not fabench's output
            logging.getLogger(logger).setLevel(logging.WARNING)
        results = Path(self.config["results_dir"]).resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{results / MLFLOW_DB}"
        with file_lock(results / f".{MLFLOW_DB}.lock"):  # one process creates the tables and the experiment
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self._experiment(results)
        if "run_id" in self.state:
            self.client.update_run(self.state["run_id"], status="RUNNING")
            return
        run = self.client.create_run(experiment, run_name=_label(self.config), tags={"fabench.run_id": self.run_id})
        self.state["run_id"] = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in hyper_parameters(self.config, self.run_id).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.state["run_id"], params=params[start:start + 100])

    def _experiment(self, results: Path) -> str:
        name = self.config["task"]
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=(results / "mlruns").as_uri())

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.state["run_id"], metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, status: str) -> None:
        finished = status in DONE_STATUSES or status == "diverged"
        self.client.set_terminated(self.state["run_id"], "FINISHED" if finished else "KILLED")


TRACKERS = {t.name: t for t in (TensorBoardTracker, WandbTracker, MlflowTracker)}


def curve_key(split: str, metric: str, layer: str) -> str:
    return f"{split}/{metric}/{layer}" if layer else f"{split}/{metric}"


class RunTrackers:
    """The trackers of one run, fed from its curves and sent what they hold at each checkpoint."""

    def __init__(self, names, run_dir: Path, config: dict, run_id: str) -> None:
        self.names, self.run_dir, self.config, self.run_id = tuple(names), run_dir, config, run_id
        self.trackers: list[Tracker] = []
        self.failed: list[Tracker] = []
        self.pending: dict[int, dict[str, float]] = defaultdict(dict)

    def add(self, step: int, split: str, metric: str, layer: str, value: float) -> None:
        if metric not in _NOT_MEASURED and math.isfinite(value):
            self.pending[step][curve_key(split, metric, layer)] = value

    def start(self, curves_path: Path, resumed: bool) -> None:
        """Open each tracker (continuing its run when resumed) and send it the curves it missed."""
        state = _read_state(self.run_dir) if resumed else {}
        for name in self.names:
            tracker = TRACKERS[name](self.run_dir, self.config, self.run_id, state.get(name, {}))
            if tracker.resend_on_resume:
                tracker.state.pop("step", None)
            self.trackers.append(tracker)
            self._guard(tracker, tracker.open)
        if resumed:
            for step, values in sorted(_curve_rows(curves_path).items()):
                self._send(step, values, [t for t in list(self.trackers) if step > t.last_step])
            self._save()

    def send(self) -> None:
        """Send the rows gathered since the last call, in step order."""
        for step in sorted(self.pending):
            self._send(step, self.pending[step], [t for t in list(self.trackers) if step > t.last_step])
        self.pending.clear()
        self._save()

    def _send(self, step: int, values: dict[str, float], trackers: list[Tracker]) -> None:
        for tracker in trackers:
            if self._guard(tracker, tracker.log, step, values):
                tracker.state["step"] = step

    def _guard(self, tracker: Tracker, action, *args) -> bool:
        """Call a tracker; if it fails, say so in one line and stop sending to it for this run.

        The run goes on: its own records are complete, and a resumed run sends the tracker what
        it missed (its last step stays where it was).
        """
        try:
            action(*args)
            return True
        except Exception as err:
            print(f"fabench: warning: --log {tracker.name} failed ({type(err).__name__}: {str(err)[:200]}); "
                  "its run stops here, fabench's own records go on", file=sys.stderr)
            self.trackers.remove(tracker)
            self.failed.append(tracker)
            return False

    def close(self, status: str, send: bool) -> None:
        """Close every tracker; ``send``: first send what is pending (a run that ends here for good)."""
        if send:
            self.send()
        for tracker in list(self.trackers):
            self._guard(tracker, tracker.close, status)
        self.trackers = []

    def _save(self) -> None:
        state = {t.name: t.state for t in (*self.trackers, *self.failed)}
        atomic_write_bytes(self.run_dir / TRACKER_STATE, (json.dumps(state, indent=2) + "\n").encode())


def _read_state(run_dir: Path) -> dict:
    try:
        state = json.loads((run_dir / TRACKER_STATE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _curve_rows(path: Path) -> dict[int, dict[str, float]]:
    """The rows of a curves.csv by step, as tracker values."""
    rows: dict[int, dict[str, float]] = defaultdict(dict)
    with contextlib.suppress(FileNotFoundError), open_no_follow(path, os.O_RDONLY, "r") as handle:
        for record in csv.DictReader(handle):
            with contextlib.suppress(TypeError, ValueError):
                value = float(record["value"])
                if record["metric"] not in _NOT_MEASURED and math.isfinite(value):
                    rows[int(record["step"])][curve_key(record["split"], record["metric"], record["layer"])] = value
    return rows


class TrackedCurves(CurveWriter):
    """A :class:`CurveWriter` that also hands each row to the run's trackers."""

    def __init__(self, path: Path, run_id: str, trackers: RunTrackers) -> None:
        super().__init__(path, run_id)
        self.trackers = trackers

    def log(self, epoch: int, step: int, split: str, metric: str, value: float, layer: str = "") -> None:
        super().log(epoch, step, split, metric, value, layer)
        self.trackers.add(step, split, metric, layer, float(value))

