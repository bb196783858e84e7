"""The resolved configuration of one run, and the run_id derived from it.

``RunConfig`` is the single definition of what a run is. The CLI's ``run`` options, a task
file's ``overrides`` and the grid's cells all produce one; ``runs.csv`` config columns are
written from it. ``run_id`` hashes the fields that change the result, so an identical finished
run is recognised and skipped, and an interrupted one is found and resumed. Fields that only
say *where* or *how visibly* a run happens (device, data directory, progress display) are
left out of the hash: the same run moved to another machine is still the same run. What a data
directory holds does decide the data, so a dataset read from one is hashed by its files
(:func:`fabench.data.dataset_identity`), never by the folder's path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from fabench.errors import FabenchError

#: Fields that do not change what is computed, hence excluded from ``run_id`` (``recipe``: its
#: effect is in the resolved values, which are hashed).
NON_IDENTITY_FIELDS = frozenset(
    {"device", "data_dir", "results_dir", "workers", "progress", "diagnostics", "feedback_memory", "recipe", "tuned"}
)

#: Seed of the class-balanced choice of --subset and --val-split images: the same images whatever
#: the run's seed, so seeds vary initialisation, feedback and order, not which images are used.
SUBSET_SEED = 0
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "multistep", "cosine")
AMP_MODES = ("off", "bf16", "fp16")
#: Seeds are 0 <= seed <= MAX_SEED: every generator fabench seeds (torch, numpy, the feedback
#: hashes) takes a signed 64-bit integer.
MAX_SEED = 2**63 - 1
#: The largest --image-size fabench accepts: a batch of 3x4096x4096 float images is 200 MB per
#: image already; larger sides are typing mistakes, not experiments.
MAX_IMAGE_SIZE = 4096


@dataclass
class RunConfig:
    """Everything that defines one training run. Defaults give a quick CIFAR-sample run."""

    # what is compared
    rule: str = "bp"
    arch: str = "arch1"
    #: keyword options of the architecture's constructor, e.g. {"hidden": "1000", "activation": "sigmoid"}
    arch_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "cifar10-mini"
    seed: int = 0
    # task bookkeeping (an ad-hoc `fabench run` belongs to task "adhoc")
    task: str = "adhoc"
    task_version: str = "0"
    #: the tuning trial whose settings this run uses ("study#trial", ``fabench grid --tuned``); its
    #: settings are in the run's identity, the trial itself is provenance
    tuned: str = ""
    # data
    subset: int | None = None
    image_size: int | None = None
    # held-out validation images (class-balanced, drawn with seed 0, never trained on)
    val_split: int = 0
    # optimisation. Fields left None are filled by the recipe (fabench.train.recipes): per
    # architecture and rule family, then per optimizer; `recipe` picks it (auto, none, a name).
    recipe: str = "auto"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool = False
    weight_decay: float | None = None
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    step_size: int = 30
    warmup_epochs: float = 0.0
    grad_clip: float | None = None
    # forward weights (see fabench.archs.reinitialise); None: from the recipe
    weight_init: str | None = None
    weight_init_scale: float | None = None
    # feedback rule options (see fabench.rules). Their defaults repeat fabench.rules.RuleOptions'
    # because this module stays free of torch (the CLI imports it at start-up); a test keeps them equal
    feedback_scale: float | None = None
    feedback_init: str = "auto"
    sn_norm: str = "fro"
    ei_mode: str = "zero"
    # the weight mirror (rule wm; fabench.rules._learned)
    mirror_lr: float = 0.01
    mirror_decay: float = 1.0
    mirror_steps: int = 1
    mirror_every: str = "step"
    mirror_warmup: int | None = None
    exclude: list[str] = field(default_factory=list)
    feedback_memory: str = "auto"
    # numerics and speed
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    diagnostics: str = "epoch"
    # placement (not part of the run's identity)
    device: str = "auto"
    data_dir: str = "data"
    results_dir: str = "results"
    workers: int = 4
    progress: bool = True

    def validate(self) -> RunConfig:
        """Check values a user can get wrong; raise FabenchError naming what would be right.

        Fields still unset (None, to be filled by the recipe) are not checked here; the
        resolved config is validated again before a run starts.
        """
        from fabench.archs import WEIGHT_INITS
        from fabench.rules import parse_feedback_memory
        from fabench.train.recipes import RECIPE_CHOICES, RECIPES

        recipes = (*RECIPE_CHOICES, *(r.name for r in RECIPES))
        checks = [
            (self.epochs >= 1, "epochs", f"--epochs must be at least 1, got {self.epochs}"),
            (self.lr is None or self.lr > 0, "lr", f"--lr must be positive, got {self.lr}"),
            (self.batch_size >= 1, "batch_size", f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.optimizer in (None, *OPTIMIZERS), "optimizer", f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got '{self.optimizer}'"),
            (self.schedule in SCHEDULES, "schedule", f"--schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'"),
            (self.amp in AMP_MODES, "amp", f"--amp must be one of {', '.join(AMP_MODES)}, got '{self.amp}'"),
            (self.subset is None or self.subset >= 1, "subset", f"--subset must be at least 1, got {self.subset}"),
            (self.image_size is None or self.image_size >= 1, "image_size", f"--image-size must be at least 1 pixel, got {self.image_size}"),
            (self.val_split >= 0, "val_split", f"--val-split must be a number of images >= 0, got {self.val_split}"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing", f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.weight_decay is None or self.weight_decay >= 0, "weight_decay", f"--weight-decay must be non-negative, got {self.weight_decay}"),
            (self.momentum is None or self.momentum >= 0, "momentum", f"--momentum must be non-negative, got {self.momentum}"),
            (self.warmup_epochs >= 0, "warmup_epochs", f"--warmup-epochs must be non-negative, got {self.warmup_epochs}"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip", f"--grad-clip must be positive, got {self.grad_clip}"),
            (self.weight_init in (None, *WEIGHT_INITS), "weight_init", f"--weight-init must be one of {', '.join(WEIGHT_INITS)}, got '{self.weight_init}'"),
            (self.weight_init_scale is None or self.weight_init_scale > 0, "weight_init_scale", f"--weight-init-scale must be positive, got {self.weight_init_scale}"),
            (self.recipe in recipes, "recipe", f"--recipe must be one of {', '.join(recipes)}, got '{self.recipe}'"),
            (self.image_size is None or self.image_size <= MAX_IMAGE_SIZE, "image_size", f"--image-size must be at most {MAX_IMAGE_SIZE} pixels, got {self.image_size}"),
            (0 <= self.seed <= MAX_SEED, "seed", f"--seed must be an integer from 0 to 2**63-1, got {self.seed}"),
            (self.workers >= 0, "workers", f"--workers must be 0 or more, got {self.workers}"),
        ]
        self._check_finite()
        for ok, setting, message in checks:
            if not ok:
                raise FabenchError(message, setting=setting)
        parse_feedback_memory(self.feedback_memory)
        return self

    def _check_finite(self) -> None:
        """Refuse inf and nan in every number setting: such a run cannot mean anything, and its
        row would be rejected by the runs.csv reader after the run."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                option = "--" + item.name.replace("_", "-")
                raise FabenchError(f"{option} must be a finite number, got {value}", setting=item.name)

    def rule_options(self) -> dict:
        """The feedback rule's options under :func:`fabench.rules.apply`'s names (its RuleOptions)."""
        return {"scale": self.feedback_scale, "init": self.feedback_init, "sn_norm": self.sn_norm,
                "ei_mode": self.ei_mode, "mirror_lr": self.mirror_lr, "mirror_decay": self.mirror_decay,
                "mirror_steps": self.mirror_steps, "mirror_every": self.mirror_every,
                "mirror_warmup": self.mirror_warmup}

    def resolved(self) -> RunConfig:
        """This config with every recipe field filled (see :mod:`fabench.train.recipes`)."""
        from fabench.train.recipes import resolve

        return resolve(self).config

    def identity(self) -> dict:
        """The fields that define the result, in a stable order, after the recipe is applied."""
        from fabench.data import dataset_identity

        values = dataclasses.asdict(self.resolved())
        # a file by its content, not its path; a data folder's dataset by its files
        values["dataset"] = dataset_identity(values["dataset"], values["data_dir"])
        return {k: v for k, v in values.items() if k not in NON_IDENTITY_FIELDS}

    @property
    def run_id(self) -> str:
        """A short hash of :meth:`identity`: equal resolved configs share a run_id."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        """Build from a mapping, rejecting unknown keys with the closest valid names."""
        from fabench.errors import unknown_choice

        known = set(cls.field_names())
        for key in values:
            if key not in known:
                raise unknown_choice("run setting", key, known)
        return cls(**values)
