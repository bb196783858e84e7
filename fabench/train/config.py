"""The resolved configuration of one run, and the run_id derived from it.

``RunConfig`` is the single definition of what a run is: each field is declared once, with its
help, choices, help panel, runs.csv column, task-file role and identity role
(:mod:`fabench.train.settings`), and the ``run`` command's options, task-file checks, the
runs.csv columns, the table's grouping and the rule engine's options are all generated from it.
The CLI's ``run`` options, a task file's ``overrides`` and the grid's cells all produce one.

``run_id`` hashes the fields that change the result, so an identical finished run is recognised
and skipped, and an interrupted one is found and resumed. Fields that only say *where* or *how
visibly* a run happens (device, data directory, progress display, trackers) are left out of the
hash: the same run moved to another machine is still the same run. What a data directory holds
does decide the data, so a dataset read from one is hashed by its files
(:func:`fabench.data.dataset_identity`), never by the folder's path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from fabench.errors import FabenchError
from fabench.setting_values import (
    AMP_MODES,
    EI_MODES,
    FEEDBACK_INITS,
    JPEG_DECODERS,
    MIRROR_EVERY,
    OPTIMIZERS,
    RULE_DEFAULTS,
    SCHEDULES,
    SN_NORMS,
    TRACKERS,
    WEIGHT_INITS,
)
from fabench.train.settings import Setting, field_defaults, option_name, setting, settings_of

#: Seed of the class-balanced choice of --subset and --val-split images: the same images whatever
#: the run's seed, so seeds vary initialisation, feedback and order, not which images are used.
SUBSET_SEED = 0
#: Seeds are 0 <= seed <= MAX_SEED: every generator fabench seeds (torch, numpy, the feedback
#: hashes) takes a signed 64-bit integer.
MAX_SEED = 2**63 - 1
#: The largest --image-size fabench accepts: a batch of 3x4096x4096 float images is 200 MB per
#: image already; larger sides are typing mistakes, not experiments.
MAX_IMAGE_SIZE = 4096

DATA, OPTIM, RULE, DIAG, EXEC = "Model and data", "Optimisation", "Rule", "Diagnostics", "Execution"
#: the recipe fills these when unset (fabench.train.recipes)
_BY_RECIPE = "the recipe's, else "


@dataclass
class RunConfig:
    """Everything that defines one training run. Defaults give a quick CIFAR-sample run.

    Each field is one setting, declared once with :func:`fabench.train.settings.setting`.

    The run id is a hash of the run's identity (:meth:`identity`), built so that results
    survive new settings:

    - fields declared ``identity="always"`` (the settings of fabench's first run ids) are
      hashed whatever their value;
    - every other identity field (``identity="changed"``, the default for a new setting) is
      hashed only when its value differs from its default;
    - ``identity="never"`` fields (placement, display, trackers) are never hashed.

    A setting added with a default that keeps the old behaviour therefore leaves every
    existing run id as it was; a run that sets it to something else gets a new id.
    """

    # task bookkeeping (an ad-hoc `fabench run` belongs to task "adhoc")
    task: str = setting("adhoc", panel=DATA, identity="always", task_file="axis", help="Task the run is filed under.")
    task_version: str = setting("0", panel=DATA, identity="always", task_file="axis", option=None,
                                help="Version of the task the run belongs to.")
    # what is compared
    rule: str = setting("bp", panel=RULE, identity="always", task_file="axis",
                        help="Feedback rule, e.g. bp, fa, fa-usf-sn+const (fabench ls rules).")
    arch: str = setting("arch1", panel=DATA, identity="always", task_file="axis",
                        help="Architecture (fabench ls archs).")
    #: keyword options of the architecture's constructor, e.g. {"hidden": "1000", "activation": "sigmoid"}
    arch_options: dict[str, Any] = setting(factory=dict, panel=DATA, identity="always", option="--arch-option",
                                           help="An option of the architecture as KEY=VALUE, e.g. hidden=1000 or "
                                                "activation=sigmoid (repeatable).")
    dataset: str = setting("cifar10-mini", panel=DATA, identity="always", task_file="axis",
                           help="Dataset name or .npz path (fabench ls datasets).")
    seed: int = setting(0, panel=DATA, identity="always", task_file="axis", help="Seed of init, feedback and data order.")
    # data
    subset: int | None = setting(None, panel=DATA, identity="always",
                                 help="Train on a class-balanced subset of this many images.")
    image_size: int | None = setting(None, panel=DATA, identity="always", show_default="the architecture's, else the dataset's",
                                     help="Input side in pixels.")
    val_split: int = setting(0, panel=DATA, identity="always",
                             help="Hold out this many training images (class-balanced, drawn with seed 0) as a validation split.")
    # optimisation. Fields left None are filled by the recipe (fabench.train.recipes): per
    # architecture and rule family, then per optimizer; `recipe` picks it (auto, none, a name).
    recipe: str = setting("auto", panel=OPTIM, identity="never",
                          help="Recipe filling unset optimizer/lr/init: auto (by arch and rule family), none, or a recipe name.")
    epochs: int = setting(10, panel=OPTIM, identity="always", help="Training epochs.")
    batch_size: int = setting(128, panel=OPTIM, identity="always", help="Training batch size.")
    optimizer: str | None = setting(None, panel=OPTIM, identity="always", choices=OPTIMIZERS,
                                    show_default=_BY_RECIPE + "adam", help="Optimizer.")
    lr: float | None = setting(None, panel=OPTIM, identity="always", show_default=_BY_RECIPE + "sgd 0.05, adam/adamw 1e-3",
                               help="Peak learning rate.")
    momentum: float | None = setting(None, panel=OPTIM, identity="always", show_default="0.9", help="SGD momentum.")
    nesterov: bool = setting(False, panel=OPTIM, identity="always", help="Nesterov momentum (SGD).")
    weight_decay: float | None = setting(None, panel=OPTIM, identity="always",
                                         show_default=_BY_RECIPE + "sgd 5e-4, adam 0, adamw 1e-2",
                                         help="Weight decay of conv/linear weights.")
    label_smoothing: float = setting(0.0, panel=OPTIM, identity="always", help="Label smoothing of the training loss.")
    schedule: str = setting("cosine", panel=OPTIM, identity="always", choices=SCHEDULES,
                            help="Learning-rate schedule (cosine: per step).")
    milestones: list[int] = setting(factory=list, panel=OPTIM, identity="always",
                                    help="Epochs where multistep multiplies the rate by gamma, e.g. 30,60.")
    gamma: float = setting(0.1, panel=OPTIM, identity="always", help="Decay factor of step/multistep.")
    step_size: int = setting(30, panel=OPTIM, identity="always", help="Epochs between decays of the step schedule.")
    warmup_epochs: float = setting(0.0, panel=OPTIM, identity="always", help="Linear warmup length in epochs (may be fractional).")
    grad_clip: float | None = setting(None, panel=OPTIM, identity="always", show_default="no clipping",
                                      help="Clip the gradients' global L2 norm to this.")
    # forward weights (see fabench.archs.reinitialise); None: from the recipe
    weight_init: str | None = setting(None, panel=OPTIM, identity="always", choices=WEIGHT_INITS,
                                      show_default=_BY_RECIPE + "default",
                                      help="Forward-weight init of covered layers (default: the arch's own).")
    weight_init_scale: float | None = setting(None, panel=OPTIM, identity="always", show_default=_BY_RECIPE + "1",
                                              help="Multiply every covered forward weight by this after init.")
    # feedback rule options (fabench.rules.RuleOptions; defaults in fabench.setting_values)
    feedback_scale: float | None = setting(RULE_DEFAULTS["scale"], panel=RULE, identity="always", rule_option="scale",
                                           show_default="from --feedback-init", help="Scale of random/sign feedback.")
    feedback_init: str = setting(RULE_DEFAULTS["init"], panel=RULE, identity="always", rule_option="init",
                                 choices=FEEDBACK_INITS, help="Init of random feedback weights.")
    sn_norm: str = setting(RULE_DEFAULTS["sn_norm"], panel=RULE, identity="always", rule_option="sn_norm", choices=SN_NORMS,
                           help="Norm of fa-usf-sn: fro (flattened L2) or spectral.")
    ei_mode: str = setting(RULE_DEFAULTS["ei_mode"], panel=RULE, identity="always", rule_option="ei_mode", choices=EI_MODES,
                           help="+ei: a weight whose update would flip sign is set to zero or keep-sign (1e-8).")
    # the weight mirror (rule wm; fabench.rules._learned)
    mirror_lr: float = setting(RULE_DEFAULTS["mirror_lr"], panel=RULE, identity="always", rule_option="mirror_lr",
                               help="wm: mirror learning rate (B moves by lr·(estimate − decay·B)).")
    mirror_decay: float = setting(RULE_DEFAULTS["mirror_decay"], panel=RULE, identity="always", rule_option="mirror_decay",
                                  help="wm: decay of B in the mirror (1: B tracks W; less: W / decay).")
    mirror_steps: int = setting(RULE_DEFAULTS["mirror_steps"], panel=RULE, identity="always", rule_option="mirror_steps",
                                help="wm: mirror steps each time the mirror runs.")
    mirror_every: str = setting(RULE_DEFAULTS["mirror_every"], panel=RULE, identity="always", rule_option="mirror_every",
                                choices=MIRROR_EVERY, help="wm: run the mirror after every training step or every epoch.")
    mirror_warmup: int | None = setting(RULE_DEFAULTS["mirror_warmup"], panel=RULE, identity="always",
                                        rule_option="mirror_warmup", show_default="one epoch's worth",
                                        help="wm: mirror steps before the first training step.")
    exclude: list[str] = setting(factory=list, panel=RULE, identity="always",
                                 help="Module-name patterns kept on exact backprop (repeat or comma-separate).")
    feedback_memory: str = setting("auto", panel=RULE, identity="never", column=False,
                                   help="dfa/dense-fa matrices: auto, materialised, tiled or a budget like 512MB.")
    #: options of the rule itself, KEY -> value
    rule_options: dict[str, Any] = setting(factory=dict, panel=RULE, option="--rule-option",
                                           help="An option of the rule as KEY=VALUE (repeatable).")
    #: files or modules that register rules, architectures or datasets
    plugins: tuple[str, ...] = setting((), panel=DATA, option="--plugin",
                                       help="A Python file or module that registers rules, architectures or datasets "
                                            "(repeatable).")
    # numerics and speed
    # precision and layout: auto (and channels_last None) are decided by fabench.train.recipes
    # (per architecture, on CPUs with native bf16); the resolved config holds what ran
    amp: str = setting("auto", panel=EXEC, identity="always", choices=AMP_MODES,
                       help="Mixed precision: auto (bf16 where the architecture was measured faster on a CPU "
                            "with native bf16, else off), bf16, fp16 (CUDA, with GradScaler) or off.")
    channels_last: bool | None = setting(None, panel=EXEC, identity="always", show_default="auto, as --amp",
                                         help="NHWC memory layout.")
    #: why the run computes in its precision and layout; set where --amp auto is decided, so that a
    #: grid's worker, a SLURM job or a tuning trial reports the decision its cell was given
    precision_reason: str = setting("", panel=EXEC, identity="never", column=False, option=None,
                                    task_file="placement",
                                    help="Why the run uses its precision and memory layout.")
    compile: bool = setting(False, panel=EXEC, identity="always", help="torch.compile the model.")
    deterministic: bool = setting(False, panel=EXEC, identity="always", help="Deterministic kernels (bitwise resumable on CPU).")
    #: the tuning trial whose settings this run uses ("study#trial", ``fabench grid --tuned``); its
    #: settings are in the run's identity, the trial itself is provenance
    tuned: str = setting("", panel=OPTIM, identity="never", option=None,
                         help="The tuning trial whose settings the run uses (study#trial).")
    # what is watched (not part of the run's identity)
    diagnostics: str = setting("epoch", panel=DIAG, identity="never", column=False,
                               help="Per-layer alignment probe: off, epoch, or every N steps (and each epoch).")
    log: tuple[str, ...] = setting((), panel=DIAG, identity="never", column=False, choices=TRACKERS,
                                   help="Send the run's metrics to a tracker (repeatable).")
    # placement (not part of the run's identity)
    device: str = setting("auto", panel=EXEC, identity="never", column=False, task_file="placement",
                          help="auto, cpu, cuda or cuda:N.")
    data_dir: str = setting("data", panel=EXEC, identity="never", column=False, task_file="placement",
                            help="Folder of downloaded datasets.")
    results_dir: str = setting("results", panel=EXEC, identity="never", column=False, task_file="placement",
                               help="Folder of results.")
    workers: int | None = setting(None, panel=EXEC, identity="never", column=False,
                                  show_default="every core but one",
                                  help="DataLoader workers (folder datasets such as imagenet).")
    jpeg_decoder: str = setting("cpu", panel=EXEC, choices=JPEG_DECODERS,
                                help="Where folder datasets' JPEGs are decoded: the DataLoader workers (cpu) "
                                     "or the run's CUDA device (gpu; pixels differ slightly, so it is part of the run id).")
    progress: bool = setting(True, panel=EXEC, identity="never", column=False, task_file="placement",
                             help="A live progress bar (--no-progress: plain per-epoch lines).")

    def __post_init__(self) -> None:
        self.plugins = tuple(self.plugins)
        self.log = tuple(self.log)
        if isinstance(self.rule_options, (list, tuple)):
            self.rule_options = key_values(self.rule_options, "--rule-option")

    def validate(self) -> RunConfig:
        """Check values a user can get wrong; raise FabenchError naming what would be right.

        Fields still unset (None, to be filled by the recipe) are not checked here; the
        resolved config is validated again before a run starts.
        """
        from fabench.rules import parse_feedback_memory
        from fabench.train.recipes import RECIPE_CHOICES, RECIPES

        recipes = (*RECIPE_CHOICES, *(r.name for r in RECIPES))
        checks = [
            (self.epochs >= 1, "epochs", f"--epochs must be at least 1, got {self.epochs}"),
            (self.lr is None or self.lr > 0, "lr", f"--lr must be positive, got {self.lr}"),
            (self.batch_size >= 1, "batch_size", f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.subset is None or self.subset >= 1, "subset", f"--subset must be at least 1, got {self.subset}"),
            (self.image_size is None or self.image_size >= 1, "image_size", f"--image-size must be at least 1 pixel, got {self.image_size}"),
            (self.val_split >= 0, "val_split", f"--val-split must be a number of images >= 0, got {self.val_split}"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing", f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.weight_decay is None or self.weight_decay >= 0, "weight_decay", f"--weight-decay must be non-negative, got {self.weight_decay}"),
            (self.momentum is None or self.momentum >= 0, "momentum", f"--momentum must be non-negative, got {self.momentum}"),
            (self.warmup_epochs >= 0, "warmup_epochs", f"--warmup-epochs must be non-negative, got {self.warmup_epochs}"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip", f"--grad-clip must be positive, got {self.grad_clip}"),
            (self.weight_init_scale is None or self.weight_init_scale > 0, "weight_init_scale", f"--weight-init-scale must be positive, got {self.weight_init_scale}"),
            (self.recipe in recipes, "recipe", f"--recipe must be one of {', '.join(recipes)}, got '{self.recipe}'"),
            (self.image_size is None or self.image_size <= MAX_IMAGE_SIZE, "image_size", f"--image-size must be at most {MAX_IMAGE_SIZE} pixels, got {self.image_size}"),
            (0 <= self.seed <= MAX_SEED, "seed", f"--seed must be an integer from 0 to 2**63-1, got {self.seed}"),
            (self.workers is None or self.workers >= 0, "workers", f"--workers must be 0 or more, got {self.workers}"),
        ]
        self._check_finite()
        self._check_choices()
        for ok, name, message in checks:
            if not ok:
                raise FabenchError(message, setting=name)
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

    def _check_choices(self) -> None:
        """Refuse a value outside its setting's closed set (None stays: the recipe fills it)."""
        for name, meta in SETTINGS.items():
            value = getattr(self, name)
            given = value if isinstance(value, (tuple, list)) else (value,)
            wrong = [item for item in given if item is not None and item not in meta.choices]
            if meta.choices and wrong:
                option = option_name(name, meta) or name
                raise FabenchError(f"{option} must be one of {', '.join(meta.choices)}, got '{wrong[0]}'", setting=name)

    def rule_engine_options(self) -> dict:
        """The rule engine's options (:class:`fabench.rules.RuleOptions`, the keywords of
        :func:`fabench.rules.apply`), from the fields that declare a ``rule_option`` name."""
        return {meta.rule_option: getattr(self, name) for name, meta in SETTINGS.items() if meta.rule_option}

    def resolved(self) -> RunConfig:
        """This config with every recipe field filled and ``--amp auto`` decided (see :mod:`fabench.train.recipes`)."""
        from fabench.train.recipes import resolve

        return resolve(self).config

    def identity(self) -> dict:
        """The fields that define the result, after the recipe is applied (see the class docstring)."""
        from fabench.data import dataset_identity

        values = dataclasses.asdict(self.resolved())
        # a file by its content, not its path; a data folder's dataset by its files
        values["dataset"] = dataset_identity(values["dataset"], values["data_dir"])
        defaults = field_defaults(type(self))
        identity = {name: values[name] for name, meta in settings_of(type(self)).items()
                    if meta.identity == "always" or (meta.identity == "changed" and values[name] != defaults[name])}
        # a plugin by its content, not its path; a rule from a plugin or package by its file's content
        from fabench.rules import plugin_identity

        identity.update(plugin_identity(values["rule"], values.get("plugins", ())))
        return identity

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


#: Field name -> its :class:`Setting`, in declaration order.
SETTINGS: dict[str, Setting] = settings_of(RunConfig)
#: Fields that never enter the run id (placement, display, trackers, provenance).
NON_IDENTITY_FIELDS = frozenset(name for name, meta in SETTINGS.items() if meta.identity == "never")


def key_values(items, option: str) -> dict:
    """``["hidden=1000", "activation=sigmoid"]`` -> ``{"hidden": 1000, "activation": "sigmoid"}``
    (numbers become int or float, everything else stays text)."""
    out: dict = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise FabenchError(f"{option} takes KEY=VALUE, e.g. {option} hidden=1000; got '{item}'")
        value: object = text.strip()
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out
