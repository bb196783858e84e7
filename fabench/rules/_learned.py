"""Rules that learn their feedback without reading W: Kolen–Pollack (``kp``) and the weight mirror (``wm``).

Akrout, Wilson, Humphreys, Lillicrap & Tweed, "Deep Learning without Weight Transport" (NeurIPS
2019, arXiv:1904.05391). In both, B is a buffer of W's shape (``feedback_weight``), starting as
``fa``'s random draw (the same numbers), and δx = Bᵀδy as for ``fa``; what differs is how B moves.

**Kolen–Pollack.** At every optimizer step B receives the update W receives, from W's gradient,
and its own weight decay: ``W ← W − η(∂L/∂W + λW)``, ``B ← B − η(∂L/∂W + λB)`` (in fabench B is
kept in W's layout, so "transposed in the matrix view" needs no transpose). Then
``B − W ← (1 − ηλ)(B − W)``: with weight decay B and W converge to each other; without it their
difference stays ``B_0 − W_0`` (the authors' public code runs without decay). Implemented by
putting every B into the run's own optimizer, in a parameter group that copies the
hyperparameters of W's group (learning rate, schedule, momentum, weight decay, betas), and by
handing B W's gradient before each step. So "the same update" means the same optimizer applied
to the same gradient, with B's own optimizer state:

- plain SGD: ``ΔB = ΔW`` exactly, without decay; with decay the difference shrinks as above;
- SGD with momentum: B's momentum buffer accumulates the same gradients (plus its own decay
  term), so again ``ΔB = ΔW`` without decay and ``B − W`` contracts with it;
- Adam: B's moment estimates see the same gradients, so without decay ``ΔB = ΔW`` (the same
  normalised step); Adam's coupled L2 decay adds ``λB`` to B's gradient (the moments then differ
  slightly), AdamW's decoupled decay shrinks ``B − W`` by ``(1 − ηλ)`` per step exactly as SGD's.

Akrout et al. train with SGD and momentum; the tests check the SGD identities.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fabench.rules._init import layer_generator
from fabench.rules._modifiers import weights_in

#: B (``feedback_weight``) and the weight mirror's step counter, on each layer.
FEEDBACK_BUFFER = "feedback_weight"
MIRROR_STEP_BUFFER = "feedback_mirror_steps"


def _feedback_of(module: nn.Module) -> torch.Tensor:
    return module._buffers[FEEDBACK_BUFFER]


def attach_kolen_pollack(optimizer: torch.optim.Optimizer, layers: dict[str, nn.Module]) -> list:
    """Give the optimizer every layer's B, in groups mirroring W's; B gets W's gradient each step.

    Returns removable handles (the step hooks, and one that takes the groups out again).
    """
    owner = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    by_group: dict[int, tuple[dict, list[nn.Module]]] = {}
    for module in layers.values():
        group = owner.get(id(module.weight))
        if group is not None:
            by_group.setdefault(id(group), (group, []))[1].append(module)
    added = []
    for group, modules in by_group.values():
        settings = {k: v for k, v in group.items() if k != "params"}
        optimizer.add_param_group({**settings, "params": [_feedback_of(m) for m in modules]})
        added.append(optimizer.param_groups[-1])
    modules = [m for _, ms in by_group.values() for m in ms]

    def hand_over_gradients(*_) -> None:
        for module in modules:
            _feedback_of(module).grad = module.weight.grad

    def release_gradients(*_) -> None:
        for module in modules:
            _feedback_of(module).grad = None

    return [optimizer.register_step_pre_hook(hand_over_gradients),
            optimizer.register_step_post_hook(release_gradients), _GroupRemoval(optimizer, added)]


class _GroupRemoval:
    """A handle whose ``remove()`` takes kp's parameter groups (and their state) out of the optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer, groups: list[dict]) -> None:
        self.optimizer, self.groups = optimizer, groups

    def remove(self) -> None:
        for group in self.groups:
            for tensor in group["params"]:
                self.optimizer.state.pop(tensor, None)
            self.optimizer.param_groups[:] = [g for g in self.optimizer.param_groups if g is not group]
        self.groups = []


# --- the weight mirror ---------------------------------------------------------------------------

#: Noise samples per mirror step and layer (batch), and output positions per sample for a conv.
MIRROR_BATCH = 64
MIRROR_POSITIONS = 4  # a 4x4 map of valid output positions: 16 per sample


def mirror_noise_shape(module: nn.Module) -> tuple[int, ...]:
    """The shape of the noise ξ one mirror step sends into ``module`` (see :func:`mirror_correlation`)."""
    weight = module.weight
    if isinstance(module, nn.Linear):
        return MIRROR_BATCH, weight.shape[1]
    side = [d * (k - 1) + 1 + s * (MIRROR_POSITIONS - 1)
            for k, s, d in zip(weight.shape[2:], module.stride, module.dilation, strict=True)]
    return MIRROR_BATCH, weight.shape[1] * module.groups, *side


def mirror_work(module: nn.Module) -> tuple[float, float]:
    """``(FLOPs, random numbers)`` of one mirror step on ``module``: the response to the noise and
    the correlation with it (``2·n·|W|`` each over ``n`` (sample, position) pairs), and ξ itself."""
    pairs = MIRROR_BATCH * (1 if isinstance(module, nn.Linear) else MIRROR_POSITIONS**2)
    return 4.0 * pairs * module.weight.numel(), float(math.prod(mirror_noise_shape(module)))


def steps_per_training_step(options) -> int:
    """Mirror steps the optimizer's post-step hook runs after each training step (0 when per epoch)."""
    return options.mirror_steps if options.mirror_every == "step" else 0


def mirror_correlation(module: nn.Module, generator: torch.Generator) -> torch.Tensor:
    """One noisy estimate of W from the layer's own response to zero-mean unit noise ξ.

    Linear: y = Wξ, estimate ``mean_i y_i ξ_iᵀ`` (E = W). Conv: ξ is a noise map just large
    enough for a 4×4 map of *valid* outputs (no padding, so every output sees a full patch),
    y = conv(ξ, W) with the layer's stride, dilation and groups, and the estimate is the weight
    gradient of that conv with δy = y, divided by the number of (sample, position) pairs (E = W).
    Bias and nonlinearity are left out: the mirror measures the linear map W itself.
    """
    weight = module.weight.detach()
    xi = torch.randn(mirror_noise_shape(module), generator=generator, device=weight.device, dtype=weight.dtype)
    if isinstance(module, nn.Linear):
        return (xi @ weight.t()).t() @ xi / MIRROR_BATCH
    stride, dilation, groups = module.stride, module.dilation, module.groups
    y = torch.nn.functional.conv2d(xi, weight, None, stride, 0, dilation, groups)
    correlation = torch.nn.grad.conv2d_weight(xi, weight.shape, y, stride, 0, dilation, groups)
    return correlation / (MIRROR_BATCH * MIRROR_POSITIONS**2)


@torch.no_grad()
def mirror_step(layers: dict[str, nn.Module], seed: int, lr: float, decay: float) -> None:
    """One mirror step on every layer: ``B ← B + lr·(Ĉ − decay·B)``, Ĉ the layer's noisy estimate of W.

    With ``decay`` 1 B is an exponential average of the estimates and tracks W itself; a smaller
    decay lets B grow to ``W / decay``. Only B and the step counter change: not W, not any
    BatchNorm statistic, not the training random streams (the noise has its own generator).
    """
    if not layers:
        return
    # each layer's counter seeds its noise (its own stream, never training's); read all at once,
    # so that a step costs one device-to-host copy, not one per layer
    counters = [module._buffers[MIRROR_STEP_BUFFER] for module in layers.values()]
    steps = torch.stack([c.to(counters[0].device) for c in counters]).tolist()
    for (name, module), counter, step in zip(layers.items(), counters, steps, strict=True):
        generator = layer_generator(seed, name, f"wm/{step}", module.weight.device)
        estimate = mirror_correlation(module, generator)
        feedback = _feedback_of(module)
        feedback.mul_(1.0 - lr * decay).add_(estimate.to(feedback.dtype), alpha=lr)
        counter.add_(1)


def mirror(layers: dict[str, nn.Module], seed: int, options, times: int) -> None:
    """``times`` mirror steps on ``layers`` with the weight mirror's ``options`` (lr, decay)."""
    for _ in range(times):
        mirror_step(layers, seed, options.mirror_lr, options.mirror_decay)


def attach_weight_mirror(optimizer: torch.optim.Optimizer, layers: dict[str, nn.Module], seed: int,
                         options) -> list:
    """Mirror ``options.mirror_steps`` times after every optimizer step (``mirror_every`` = step).

    With ``mirror_every`` = epoch the engine cannot see epochs; the training loop calls
    :func:`mirror_step` itself through the handle (:meth:`FeedbackHandle.end_epoch`).
    """
    steps = steps_per_training_step(options)
    if not steps:
        return []
    targets = weights_in(optimizer, layers)

    def after_step(*_) -> None:
        mirror(targets, seed, options, steps)

    return [optimizer.register_step_post_hook(after_step)]
