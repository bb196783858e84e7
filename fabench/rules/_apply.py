"""``apply``: attach a rule to every Conv2d and Linear of any model; the handle undoes it."""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from fabench.errors import FabenchError
from fabench.rules import _attention, _direct, _init, _layers
from fabench.rules._feedback import HELD_KINDS
from fabench.rules._handle import FeedbackHandle
from fabench.rules._options import RuleOptions
from fabench.rules._spec import RuleSpec, parse_rule
from fabench.rules._tiles import parse_feedback_memory


def covered_layers(model: nn.Module, exclude=()) -> dict[str, nn.Module]:
    """Every Conv2d and Linear of ``model`` by module name, minus fnmatch ``exclude`` patterns."""
    return {
        name: module for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
        and not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)
    }


def _kind_for(spec: RuleSpec, options: RuleOptions) -> str:
    kind = spec.base.kind
    return "sn-spectral" if kind == "sn" and options.sn_norm == "spectral" else kind


def _std(weight: torch.Tensor, kind: str, options: RuleOptions) -> float:
    """The feedback scale: the user's, else the init the rule's provenance names."""
    if options.scale is not None:
        return options.scale
    init = options.init if options.init != "auto" else ("xiao" if kind == "usf" else "kaiming")
    return _init.init_std(weight, init)


def _register_buffers(module: nn.Module, name: str, spec: RuleSpec, kind: str, options: RuleOptions, seed: int) -> None:
    """Create the fixed tensors this layer's rule and modifiers need, seeded by its name."""
    weight = module.weight.detach()
    std = _std(weight, kind, options)
    # fa-usf-init's magnitudes, dense-fa's Linear feedback and kp's and wm's starting B are fa's own draws
    purpose = "fa" if spec.base.name in ("fa-usf-init", "dense-fa", "kp", "wm") else spec.base.name
    if kind in HELD_KINDS:
        module.register_buffer("feedback_weight", _init.draw_normal(weight, std, seed, name, purpose))
        if kind == "wm":
            module.register_buffer(_layers.MIRROR_STEP_BUFFER, torch.zeros((), dtype=torch.int64, device=weight.device))
    elif kind == "magnitude":
        module.register_buffer("feedback_magnitude", _init.draw_normal(weight, std, seed, name, purpose).abs())
    elif kind in ("usf", "brsf"):
        module.register_buffer("feedback_scale", torch.tensor(std, dtype=weight.dtype, device=weight.device))
    if "ei" in spec.modifiers:
        sign = torch.where(weight >= 0, 1.0, -1.0).to(weight.dtype)
        module.register_buffer(_layers.SIGN_BUFFER, sign)
    if "const" in spec.modifiers:
        module.register_buffer(_layers.NORM_BUFFER, torch.linalg.vector_norm(weight).clone())


def apply(model: nn.Module, rule: str, *, seed: int = 0, exclude=(), scale: float | None = None,
          init: str = "auto", sn_norm: str = "fro", ei_mode: str = "zero", feedback_memory: str = "auto",
          input_shape: tuple[int, ...] | None = None, mirror_lr: float = 0.01, mirror_decay: float = 1.0,
          mirror_steps: int = 1, mirror_every: str = "step", mirror_warmup: int | None = None) -> FeedbackHandle:
    """Attach feedback ``rule`` (e.g. ``"fa-usf-sn+const"``) to every Conv2d/Linear of ``model``.

    ``exclude``: fnmatch patterns of module names left on exact backprop. ``scale``: the
    feedback's standard deviation (``fa``), magnitude scale (``fa-usf``, ``fa-frsf``, ...),
    overriding ``init``: ``auto`` (``kaiming`` fan-in std for random feedback, ``xiao``
    fan-out std for ``fa-usf``, the scales RULES.md gives), ``kaiming``, ``xiao``, ``xavier``
    or ``weight`` (the forward weight's own std). ``sn_norm``: ``fro`` (the flattened L2 norm,
    what Lance & Kieu's code uses) or ``spectral`` (what their text says). ``ei_mode``:
    ``zero`` leaves a weight whose update would flip its sign at 0, ``keep-sign`` at a tiny
    value of its original sign.

    ``dfa``, ``dfa-conv`` and ``dense-fa`` hold one fixed random matrix per layer
    (:mod:`fabench.rules._direct`). ``feedback_memory`` (``auto``, ``materialised``, ``tiled``
    or a size such as ``512MB``) decides whether they are held or redrawn in tiles during
    backward; ``input_shape`` (e.g. ``(3, 224, 224)``) lets that plan be made at once, by a
    batch-1 probe forward, instead of at the first training forward.

    ``kp`` and ``wm`` learn B (:mod:`fabench.rules._learned`); ``mirror_lr``, ``mirror_decay``,
    ``mirror_steps``, ``mirror_every`` (``step`` or ``epoch``) and ``mirror_warmup`` (mirror steps
    before training; None: one epoch's worth, run by ``handle.begin_training``) set the weight mirror.
    """
    spec = parse_rule(rule)
    options = RuleOptions(scale, init, sn_norm, ei_mode, mirror_lr, mirror_decay, mirror_steps,
                          mirror_every, mirror_warmup).validate().check_used_by(spec)
    memory = parse_feedback_memory(feedback_memory)
    layers = covered_layers(model, exclude)
    if not layers:
        raise FabenchError(f"{type(model).__name__} has no nn.Conv2d or nn.Linear layer a rule could act on "
                           "(or --exclude removed them all)")
    _attention.refuse_uncalled(model, layers)
    attached = [n for n, m in layers.items() if "_fabench_rule" in m.__dict__]
    if attached:
        raise FabenchError(f"layer '{attached[0]}' already carries a rule; call handle.remove() first")
    kind = _kind_for(spec, options)
    for name, module in layers.items():
        layer_kind = _direct.layer_kind(kind, module)
        _register_buffers(module, name, spec, layer_kind, options, seed)
        layer_rule = _layers.LayerRule(layer_kind, "ei" in spec.modifiers, _layers.uses_own_forward(module))
        _layers.install_forward(module, name, layer_rule)
    excluded = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in layers]
    handle_args = {"spec": spec, "options": options, "seed": seed, "layers": layers, "excluded": excluded}
    if kind in _direct.DIRECT_KINDS:
        return _direct.attach(model, handle_args, kind, memory, input_shape)
    return FeedbackHandle(**handle_args)
