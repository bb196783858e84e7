"""Learned feedback: Kolen-Pollack and the weight mirror (fabench.rules._learned), the mlp arch."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fabench.errors import FabenchError
from fabench.rules import apply, list_rules
from fabench.train import run
from fabench.train.config import RunConfig

QUICK = dict(arch="mlp", dataset="mnist-mini", subset=1000, batch_size=50, epochs=2, diagnostics="off", device="cpu")


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def feedback_buffers(model: nn.Module) -> list[str]:
    """Names of the feedback buffers a rule left on ``model`` (``3.feedback_weight``, ...)."""
    return [name for name, _ in model.named_buffers() if name.rsplit(".", 1)[-1].startswith("feedback_")]


def train_steps(model, handle, optimizer, steps: int):
    """Yield (ΔW, ΔB) per covered layer after each of ``steps`` optimizer steps."""
    layers = list(handle.layers.values())
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        before = [(m.weight.detach().clone(), m.feedback_weight.clone()) for m in layers]
        optimizer.zero_grad()
        x = torch.randn(8, 3, 6, 6, generator=data)
        F.cross_entropy(model(x), torch.randint(0, 3, (8,), generator=data)).backward()
        optimizer.step()
        yield [(m.weight.detach() - w, m.feedback_weight - b) for m, (w, b) in zip(layers, before, strict=True)]


def bw_angle(module) -> float:
    b, w = module.feedback_weight.flatten(), module.weight.detach().flatten()
    return float(torch.rad2deg(torch.arccos(((b @ w) / (b.norm() * w.norm())).clamp(-1, 1))))


def test_kp_and_wm_are_listed_with_their_provenance():
    rules = list_rules()
    assert "Akrout et al. 2019" in rules["kp"] and "Akrout et al. 2019" in rules["wm"]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_kp_gives_b_exactly_ws_change_under_sgd_without_decay(momentum):
    model = small_net()
    handle = apply(model, "kp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    handle.attach_optimizer(optimizer)
    for changes in train_steps(model, handle, optimizer, 10):
        for d_w, d_b in changes:
            assert d_w.abs().max() > 0
            torch.testing.assert_close(d_b, d_w, rtol=0, atol=1e-6)


def test_kp_with_weight_decay_shrinks_b_minus_w_by_one_minus_lr_lambda_each_step():
    model = small_net()
    handle = apply(model, "kp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.2)
    handle.attach_optimizer(optimizer)
    layers = list(handle.layers.values())
    gaps = [(m.feedback_weight - m.weight.detach()).clone() for m in layers]
    for _ in train_steps(model, handle, optimizer, 5):
        for i, m in enumerate(layers):
            gaps[i] = gaps[i] * (1 - 0.1 * 0.2)
            torch.testing.assert_close(m.feedback_weight - m.weight.detach(), gaps[i], rtol=1e-4, atol=1e-6)


def test_kp_b_converges_to_w_under_decay():
    model = small_net()
    handle = apply(model, "kp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    handle.attach_optimizer(optimizer)
    start = [bw_angle(m) for m in handle.layers.values()]
    for _ in train_steps(model, handle, optimizer, 300):
        pass
    end = [bw_angle(m) for m in handle.layers.values()]
    assert min(start) > 60 and max(end) < 5, (start, end)


def test_kp_removal_takes_b_out_of_the_optimizer():
    model = small_net()
    handle = apply(model, "kp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    groups = len(optimizer.param_groups)
    handle.attach_optimizer(optimizer)
    assert len(optimizer.param_groups) == groups + 1
    assert feedback_buffers(model) == ["0.feedback_weight", "3.feedback_weight"]
    handle.remove()
    assert len(optimizer.param_groups) == groups
    assert feedback_buffers(model) == []


def test_wm_moves_b_to_w_and_leaves_w_batchnorm_and_rng_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    handle = apply(model, "wm", mirror_steps=300)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: W stays; only the mirror acts
    handle.attach_optimizer(optimizer)
    x = torch.randn(8, 20)
    F.cross_entropy(model(x), torch.arange(4).repeat(2)).backward()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = {n: b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n}
    start = [bw_angle(m) for m in handle.layers.values()]
    rng = torch.get_rng_state()
    optimizer.step()
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers() if n in stats)
    end = [bw_angle(m) for m in handle.layers.values()]
    assert min(start) > 60 and max(end) < 15, (start, end)
    assert [int(m.feedback_mirror_steps) for m in handle.layers.values()] == [300, 300]


def test_wm_on_a_strided_grouped_conv_estimates_its_kernel():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, dilation=2, groups=2)
    model = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 4, 9, 9))
    handle = apply(model, "wm", mirror_steps=300, exclude=["2"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    handle.attach_optimizer(optimizer)
    optimizer.step()
    assert bw_angle(conv) < 10


def test_mirror_options_are_refused_on_other_rules():
    with pytest.raises(FabenchError, match="--mirror-lr applies to wm"):
        apply(small_net(), "kp", mirror_lr=0.1)
    with pytest.raises(FabenchError, match="--mirror-every must be one of step, epoch"):
        apply(small_net(), "wm", mirror_every="batch")


@pytest.mark.parametrize("rule", ["kp", "wm"])
def test_learned_rules_learn_and_their_b_aligns_with_w(rule, tmp_path):
    # SGD with momentum and weight decay, as Akrout et al. train: kp's B - W then contracts
    settings = {**QUICK, "batch_size": 25, "epochs": 3, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
                "weight_decay": 5e-3, "diagnostics": "epoch"}
    result = run(RunConfig(**settings, rule=rule, results_dir=str(tmp_path)), hooks=_probe_hooks())
    assert result.status == "finished" and result.row["final_top1"] > 60.0
    with open(result.run_dir / "curves.csv") as handle:
        angles = [(int(r["epoch"]), float(r["value"])) for r in csv.DictReader(handle)
                  if r["metric"] == "bw_angle" and r["layer"] == "net.1"]
    if rule == "kp":
        assert angles[-1][1] < angles[0][1] - 10, angles  # B turns toward W during training
    else:  # the mirror's first sweep aligns B before the first step, and it stays aligned
        assert max(a for _, a in angles) < 60, angles


def _probe_hooks():
    from fabench.diagnostics import ProbeHook

    return [ProbeHook()]


@pytest.mark.parametrize("rule", ["kp", "wm"])
def test_kp_and_wm_resume_bit_identical(rule, tmp_path, monkeypatch):
    from test_train import assert_same_result

    settings = dict(QUICK, rule=rule, subset=200, batch_size=20, optimizer="sgd", lr=0.05, weight_decay=1e-3,
                    deterministic=True)
    reference = run(RunConfig(**settings, results_dir=str(tmp_path / "a")))
    monkeypatch.setenv("FABENCH_FAULT", "sigint@step=13")  # epoch 2, step 3 of 10
    assert run(RunConfig(**settings, results_dir=str(tmp_path / "b"))).status == "interrupted"
    monkeypatch.delenv("FABENCH_FAULT")
    assert_same_result(run(RunConfig(**settings, results_dir=str(tmp_path / "b"))), reference)


def test_mlp_options_shape_the_network():
    from fabench.archs import check_arch_options, create_model

    model, _ = create_model("mlp", num_classes=10, in_chans=1, image_size=28, hidden="1000,500", activation="sigmoid")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 1000), (1000, 500), (500, 10)]
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 2
    with pytest.raises(FabenchError, match="has no option 'width'; it takes hidden, activation"):
        check_arch_options("mlp", {"width": 3})
    with pytest.raises(FabenchError, match="activation must be one of relu, sigmoid, tanh"):
        create_model("mlp", num_classes=10, activation="gelu")
