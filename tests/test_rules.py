"""The rule engine: every rule's feedback, exactness where B = W, modifiers, compile, autocast."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from fabench.errors import FabenchError
from fabench.rules import _feedback, apply, list_modifiers, list_rules, parse_rule

FA_FAMILY = ("fa", "fa-usf", "fa-usf-init", "fa-usf-sn", "fa-frsf", "fa-brsf")


def small_cnn() -> nn.Module:
    """Covers stride, 'valid'/'same' strings, reflect padding, dilation, groups, depthwise, no bias."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding="valid", groups=2), nn.ReLU(),
        nn.Conv2d(8, 8, 4, padding="same", padding_mode="reflect"), nn.ReLU(),
        nn.Conv2d(8, 8, 4, padding="same"), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 7 * 7, 10),
    )


MODELS = {
    "small_cnn": (small_cnn, (3, 16, 16)),
    "resnet18": (lambda: timm.create_model("resnet18", num_classes=10), (3, 32, 32)),
    "mobilenetv3_small_050": (lambda: timm.create_model("mobilenetv3_small_050", num_classes=10), (3, 32, 32)),
    "vit_tiny_patch16_224": (lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32), (3, 32, 32)),
}


def build(name: str, dtype=torch.float64) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    model = factory().to(dtype).train()
    return model, torch.randn(2, *shape, dtype=dtype)


def param_grads(model: nn.Module, x: torch.Tensor, run=None) -> dict[str, torch.Tensor]:
    """Gradients of a fixed linear read-out of ``run(x)`` (default: the model itself)."""
    model.zero_grad(set_to_none=True)
    out = (run or model)(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@torch.no_grad()
def force_feedback_to_weight(handle, rule: str, monkeypatch) -> None:
    """Make B equal W for ``rule``: set the buffers, or give W equal magnitudes where B is s·sign(W)."""
    for module in handle.layers.values():
        if rule == "fa":
            module.feedback_weight.copy_(module.weight)
        elif rule in ("fa-usf-init", "fa-frsf"):
            module.feedback_magnitude.copy_(module.weight.abs())
        elif rule == "fa-usf":
            module.weight.copy_(torch.sign(module.weight) * module.feedback_scale)
        elif rule == "fa-usf-sn":
            module.weight.copy_(torch.sign(module.weight) * module.weight.abs().mean())
    if rule == "fa-brsf":
        monkeypatch.setattr(_feedback, "draw_magnitudes", lambda weight, std: weight.abs())


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("rule", FA_FAMILY)
def test_feedback_equal_to_weight_reproduces_backprop(model_name, rule, monkeypatch):
    model, x = build(model_name)
    handle = apply(model, rule, seed=3)
    force_feedback_to_weight(handle, rule, monkeypatch)
    grads_rule = param_grads(model, x)
    reference = copy.deepcopy(model)
    for module in reference.modules():  # a plain-backprop copy with the same weights
        module.__dict__.pop("forward", None)
    grads_bp = param_grads(reference, x)
    assert grads_rule.keys() == grads_bp.keys()
    for name, grad in grads_bp.items():
        scale = grad.norm().clamp_min(1e-12)
        assert (grads_rule[name] - grad).norm() / scale <= 1e-6 or (grads_rule[name] - grad).abs().max() < 1e-12, name


def reference_feedback(rule: str, module: nn.Module, rng_state) -> torch.Tensor:
    """B computed straight from docs/rules.md's formulas, independently of the engine."""
    w = module.weight.detach()
    if rule == "bp":
        return w
    if rule == "fa":
        return module.feedback_weight
    if rule == "fa-usf":
        return module.feedback_scale * torch.sign(w)
    if rule in ("fa-usf-init", "fa-frsf"):
        return module.feedback_magnitude * torch.sign(w)
    if rule == "fa-usf-sn":
        return torch.sign(w) * w.norm() / w.numel() ** 0.5
    if rule == "fa-brsf":
        torch.set_rng_state(rng_state)
        return torch.randn_like(w).abs() * module.feedback_scale * torch.sign(w)
    raise AssertionError(rule)


@pytest.mark.parametrize("rule", ("bp", *FA_FAMILY))
def test_conv_error_signal_matches_formula(rule):
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2).double()
    x = torch.randn(3, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    grad_y = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    plain_w_grad = torch.autograd.grad(conv(x), conv.weight, grad_y)[0]
    apply(conv, rule, seed=0)
    rng_state = torch.get_rng_state()
    dx, dw = torch.autograd.grad(conv(x), (x, conv.weight), grad_y)
    b = reference_feedback(rule, conv, rng_state)
    expected = torch.nn.grad.conv2d_input(x.shape, b, grad_y, stride=2, padding=1, groups=2)
    torch.testing.assert_close(dx, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dw, plain_w_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rule", ("bp", *FA_FAMILY))
def test_linear_error_signal_matches_formula(rule):
    torch.manual_seed(2)
    linear = nn.Linear(7, 5).double()
    x = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)  # leading dims are kept
    grad_y = torch.randn(2, 3, 5, dtype=torch.float64)
    plain_w_grad = torch.autograd.grad(linear(x), linear.weight, grad_y)[0]
    apply(linear, rule, seed=0)
    rng_state = torch.get_rng_state()
    dx, dw = torch.autograd.grad(linear(x), (x, linear.weight), grad_y)
    torch.testing.assert_close(dx, grad_y @ reference_feedback(rule, linear, rng_state), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dw, plain_w_grad, rtol=1e-10, atol=1e-12)


def train_steps(model, handle, steps=4, lr=0.5, optimizer_cls=torch.optim.SGD, **opt_kwargs):
    """Run a few optimizer steps; yield after each so tests can check invariants."""
    optimizer = optimizer_cls(model.parameters(), lr=lr, **opt_kwargs)
    handle.attach_optimizer(optimizer)
    torch.manual_seed(5)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        yield optimizer


def test_sn_feedback_norm_equals_weight_norm_at_every_step():
    model = small_cnn()
    handle = apply(model, "fa-usf-sn")
    for _ in train_steps(model, handle):
        for name, module in handle.layers.items():
            torch.testing.assert_close(handle.feedback(name).norm(), module.weight.detach().norm())


def test_const_holds_weight_norm_and_layers_still_learn():
    model = small_cnn()
    handle = apply(model, "fa-usf-sn+const")
    initial = {n: m.weight.detach().norm().clone() for n, m in handle.layers.items()}
    previous = {n: m.weight.detach().clone() for n, m in handle.layers.items()}
    for _ in train_steps(model, handle, momentum=0.9):
        for name, module in handle.layers.items():
            torch.testing.assert_close(module.weight.detach().norm(), initial[name])
            assert not torch.equal(module.weight.detach(), previous[name]), f"{name} stopped learning"
            previous[name] = module.weight.detach().clone()


def test_ei_never_flips_a_sign():
    model = small_cnn()
    handle = apply(model, "fa-usf+ei")
    signs = {n: torch.sign(m.weight.detach()).clone() for n, m in handle.layers.items()}
    zeroed = 0
    for _ in train_steps(model, handle, steps=6, lr=2.0):
        for name, module in handle.layers.items():
            assert (module.weight.detach() * signs[name] >= 0).all(), name
    zeroed = sum(int((m.weight == 0).sum()) for m in handle.layers.values())
    assert zeroed > 0, "the large steps should have pushed some weights onto zero"


def test_bm_optimizer_receives_sign_gradients():
    model = small_cnn()
    handle = apply(model, "fa+bm")
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    handle.attach_optimizer(optimizer)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    F.cross_entropy(model(x), y).backward()
    before = {n: (m.weight.detach().clone(), m.weight.grad.clone()) for n, m in handle.layers.items()}
    optimizer.step()
    for name, module in handle.layers.items():
        weight, grad = before[name]
        torch.testing.assert_close(weight - module.weight.detach(), torch.sign(grad))


def test_brsf_redraws_and_fa_keeps_feedback_fixed():
    model = small_cnn()
    brsf = apply(model, "fa-brsf")
    name = "0"
    first, second = brsf.feedback(name), brsf.feedback(name)
    assert not torch.equal(first, second)
    assert torch.equal(torch.sign(first), torch.sign(model[0].weight.detach()))
    brsf.remove()
    fa = apply(model, "fa")
    start = {n: fa.feedback(n).clone() for n in fa.layers}
    for _ in train_steps(model, fa):
        pass
    for n in fa.layers:
        assert torch.equal(fa.feedback(n), start[n])


def test_remove_restores_exact_backprop():
    model, x = build("small_cnn")
    keys = list(model.state_dict())
    expected = param_grads(model, x)
    handle = apply(model, "fa-usf-sn+const+ei")
    assert set(model.state_dict()) > set(keys)  # feedback tensors are buffers
    assert param_grads(model, x).keys() == expected.keys()
    handle.remove()
    assert list(model.state_dict()) == keys
    assert all("forward" not in m.__dict__ for m in model.modules())
    for name, grad in param_grads(model, x).items():
        assert torch.equal(grad, expected[name]), name


@pytest.mark.parametrize("rule", ("fa", "fa-usf-sn+const"))
def test_compiled_and_eager_gradients_agree(rule):
    model, x = build("small_cnn", dtype=torch.float32)
    apply(model, rule, seed=0)
    eager = param_grads(model, x)
    compiled = param_grads(model, x, run=torch.compile(model))
    for module in model.modules():
        module.__dict__.pop("forward", None)
    plain = param_grads(model, x)
    for name, grad in eager.items():
        torch.testing.assert_close(compiled[name], grad, rtol=1e-4, atol=1e-6)
    assert (eager["0.weight"] - plain["0.weight"]).norm() > 1e-3 * plain["0.weight"].norm(), "compile must keep the rule"


def test_same_seed_same_feedback_whatever_the_visiting_order():
    layers = {"a": (3, 4), "b": (4, 5), "c": (5, 6)}
    forward = nn.ModuleDict({k: nn.Linear(*v) for k, v in layers.items()})
    backward = nn.ModuleDict({k: nn.Linear(*layers[k]) for k in reversed(layers)})
    apply(forward, "fa", seed=7)
    apply(backward, "fa", seed=7)
    for key in layers:
        assert torch.equal(forward[key].feedback_weight, backward[key].feedback_weight)
    other = nn.ModuleDict({k: nn.Linear(*v) for k, v in layers.items()})
    apply(other, "fa", seed=8)
    assert not torch.equal(other["a"].feedback_weight, forward["a"].feedback_weight)


FORWARD_MATRIX = {
    **{name: spec for name, spec in MODELS.items()},
    "tf_efficientnet_b0 (Conv2dSame)": (lambda: timm.create_model("tf_efficientnet_b0", num_classes=10), (3, 32, 32)),
    "nf_resnet26 (ScaledStdConv2d)": (lambda: timm.create_model("nf_resnet26", num_classes=10), (3, 32, 32)),
}


@pytest.mark.parametrize("model_name", list(FORWARD_MATRIX))
def test_forward_is_bit_identical_after_apply(model_name):
    torch.manual_seed(0)
    factory, shape = FORWARD_MATRIX[model_name]
    model = factory().eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        before = model(x)
    handle = apply(model, "fa-usf-sn", seed=0)
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, after)
    model.train()
    model(x).sum().backward()  # the rule's backward runs through every layer, subclasses included
    assert all(m.weight.grad is not None for m in handle.layers.values())


def test_weight_standardised_conv_uses_the_standardised_weight():
    from timm.layers import ScaledStdConv2d

    conv = ScaledStdConv2d(3, 4, 3, padding=0).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    grad_y = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    apply(conv, "fa-usf-sn")
    dx = torch.autograd.grad(conv(x), x, grad_y)[0]
    w_eff = F.batch_norm(conv.weight.reshape(1, 4, -1), None, None, weight=(conv.gain * conv.scale).view(-1),
                         training=True, momentum=0.0, eps=conv.eps).reshape_as(conv.weight).detach()
    b = torch.sign(w_eff) * w_eff.norm() / w_eff.numel() ** 0.5
    torch.testing.assert_close(dx, torch.nn.grad.conv2d_input(x.shape, b, grad_y))


def test_layer_with_two_convs_in_its_forward_is_refused_by_name():
    class DoubleConv(nn.Conv2d):
        def forward(self, x):
            return F.conv2d(F.conv2d(x, self.weight, padding=1), self.weight, padding=1)

    model = nn.Sequential(DoubleConv(3, 3, 3))
    apply(model, "fa")
    with pytest.raises(FabenchError, match=r"layer '0'.*2 conv"):
        model(torch.randn(1, 3, 5, 5))


@pytest.mark.parametrize("amp_dtype", (torch.bfloat16, torch.float16))
def test_autocast_keeps_forward_and_gives_float32_gradients(amp_dtype):
    model, x = build("small_cnn", dtype=torch.float32)
    with torch.autocast("cpu", dtype=amp_dtype):
        before = model(x)
    apply(model, "fa-usf-sn")
    with torch.autocast("cpu", dtype=amp_dtype):
        after = model(x)
    assert torch.equal(before, after) and after.dtype == amp_dtype
    after.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_channels_last_gives_the_same_gradients():
    model, x = build("resnet18")
    apply(model, "fa-usf", seed=0)
    contiguous = param_grads(model, x)
    model = model.to(memory_format=torch.channels_last)
    last = param_grads(model, x.to(memory_format=torch.channels_last))
    for name, grad in contiguous.items():
        assert (last[name] - grad).norm() <= 1e-9 * grad.norm().clamp_min(1e-12), name


def test_exclude_leaves_layers_on_backprop_and_listing():
    model = small_cnn()
    handle = apply(model, "fa", exclude=["1*", "4"])
    assert "4" not in handle.layers and "4" in handle.excluded
    assert "forward" not in model[4].__dict__
    assert set(list_rules("fa-usf*")) == {"fa-usf", "fa-usf-init", "fa-usf-sn"}
    assert set(list_modifiers()) == {"const", "ei", "bm"}


@pytest.mark.parametrize(("spec", "message"), [
    ("fa-usf-snn", r"unknown rule 'fa-usf-snn'; valid choices \(closest first\): fa-usf-sn"),
    ("fa+cost", r"unknown rule modifier '\+cost'; valid choices \(closest first\): \+const"),
    ("fa+ei+ei", "repeats a modifier"),
])
def test_bad_rule_names_get_one_clear_error(spec, message):
    with pytest.raises(FabenchError, match=message):
        parse_rule(spec)


def test_model_without_layers_is_refused():
    with pytest.raises(FabenchError, match=r"no nn\.Conv2d or nn\.Linear"):
        apply(nn.Sequential(nn.ReLU()), "fa")


def test_spectral_sn_matches_the_forward_spectral_norm():
    model = small_cnn()
    handle = apply(model, "fa-usf-sn", sn_norm="spectral")
    for name, module in handle.layers.items():
        b, w = handle.feedback(name), module.weight.detach()
        spectral = [torch.linalg.matrix_norm(t.reshape(t.shape[0], -1), ord=2) for t in (b, w)]
        torch.testing.assert_close(spectral[0], spectral[1])
        assert torch.equal(torch.sign(b), torch.sign(w))


def test_ei_keep_sign_leaves_a_tiny_value_of_the_original_sign():
    model = small_cnn()
    handle = apply(model, "fa-usf+ei", ei_mode="keep-sign")
    signs = {n: torch.sign(m.weight.detach()).clone() for n, m in handle.layers.items()}
    for _ in train_steps(model, handle, steps=6, lr=2.0):
        pass
    clamped = 0
    for name, module in handle.layers.items():
        weight = module.weight.detach()
        assert (weight * signs[name] > 0).all(), name  # never zero, never flipped
        clamped += int((weight.abs() == 1e-8).sum())
    assert clamped > 0, "the large steps should have pushed some weights onto the floor"
