"""The closed sets of values that run settings take, and the rule engine's defaults.

One home for each, free of torch: the command line lists the sets in ``--help`` and its parser
refuses anything else, task files are checked against them, and the modules that act on a value
(the rule engine, the architectures' initialisers) import them from here, as do both
:class:`fabench.train.config.RunConfig` and :class:`fabench.rules.RuleOptions` their defaults.
"""

from __future__ import annotations

OPTIMIZERS = ("sgd", "adam", "adamw")
#: Learning-rate schedules (fabench.train.schedule); cosine anneals per step.
SCHEDULES = ("none", "step", "multistep", "cosine")
#: Mixed precision: auto (by architecture and device, fabench.train.recipes), off, bfloat16, or
#: float16 with a gradient scaler (CUDA).
AMP_MODES = ("auto", "off", "bf16", "fp16")
#: Where a folder dataset's JPEGs are decoded: the DataLoader workers, or the run's CUDA device.
JPEG_DECODERS = ("cpu", "gpu")
#: Trackers a run's metrics can be sent to.
TRACKERS = ("tensorboard", "wandb", "mlflow")
#: Forward-weight initialisations (fabench.archs.reinitialise); ``default`` keeps the architecture's.
WEIGHT_INITS = ("default", "xavier-uniform", "xavier-normal", "kaiming-normal", "kaiming-uniform")
#: Feedback-weight initialisations (fabench.rules); ``auto`` picks per rule.
FEEDBACK_INITS = ("auto", "kaiming", "xiao", "xavier", "weight")
#: Norms of fa-usf-sn: the flattened L2 (Frobenius) norm or the spectral norm.
SN_NORMS = ("fro", "spectral")
#: What +ei does to a weight whose update would flip its sign: set it to zero, or keep its sign (1e-8).
EI_MODES = ("zero", "keep-sign")
#: When the weight mirror (wm) runs: after every training step or every epoch.
MIRROR_EVERY = ("step", "epoch")

#: Defaults of the rule engine's options, under fabench.rules.RuleOptions' names: the feedback
#: scale (None: from the init), feedback init, sn norm, +ei mode, and the weight mirror's learning
#: rate, decay, steps, schedule and warmup steps (None: one epoch's worth).
RULE_DEFAULTS = {
    "scale": None, "init": "auto", "sn_norm": "fro", "ei_mode": "zero", "mirror_lr": 0.01, "mirror_decay": 1.0,
    "mirror_steps": 1, "mirror_every": "step", "mirror_warmup": None,
}
