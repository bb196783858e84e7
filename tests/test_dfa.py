"""DFA, dfa-conv, dfa-wht and dense-fa: δx by hand, tiled = materialised, seeds across processes, learning."""

from __future__ import annotations

import copy
import hashlib
import math
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from fabench.errors import FabenchError
from fabench.rules import _tiles, apply, list_rules, parse_rule

DIRECT_RULES = ("dfa", "dfa-conv", "dfa-wht", "dense-fa")
CLASSES = 7


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two spinning OpenMP threads run ~5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cnn() -> nn.Module:
    """Conv, strided conv, BatchNorm, a residual add and two Linear layers, in float64."""
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.down = nn.Conv2d(4, 5, 3, stride=2, bias=False)
            self.bn = nn.BatchNorm2d(5)
            self.same = nn.Conv2d(5, 5, 3, padding=1)
            self.hidden = nn.Linear(5 * 3 * 3, 6)
            self.head = nn.Linear(6, CLASSES)

        def forward(self, x):
            x = F.relu(self.stem(x))
            x = F.relu(self.bn(self.down(x)))
            x = F.relu(x + self.same(x))
            return self.head(F.relu(self.hidden(x.flatten(1))))

    torch.manual_seed(0)
    return Tiny().double()


def batch(n=4, size=8):
    torch.manual_seed(1)
    return torch.randn(n, 3, size, size, dtype=torch.float64), torch.randint(0, CLASSES, (n,))


def grads(model, x, y) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def splitmix64_word(key: int, index: int) -> int:
    """Word ``index`` of SplitMix64 started at ``key``, in plain Python integers (Steele, Lea & Flood 2014)."""
    mask = (1 << 64) - 1
    z = (key + (index + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def stream_bytes(key: int, count: int) -> torch.Tensor:
    """The first ``count`` entries of a stream as signed bytes: each word's 8 bytes, little-endian."""
    raw = b"".join(splitmix64_word(key, w).to_bytes(8, "little") for w in range(-(-count // 8)))
    return torch.frombuffer(bytearray(raw[:count]), dtype=torch.int8)


def hand_drawn(seed: int, name: str, purpose: str, rows: int, cols: int, std: float) -> torch.Tensor:
    """The matrix as docs/dfa.md defines it: entry (r, c) is the stream's entry r·cols + c, (2b + 1)·std/σ."""
    key = int.from_bytes(hashlib.blake2b(f"{seed}\x00{name}\x00{purpose}\x00counter".encode(),
                                         digest_size=8).digest(), "little")
    levels = stream_bytes(key, rows * cols).float()
    sigma = math.sqrt((256**2 - 1) / 3)
    return levels.mul_(2 * std / sigma).add_(std / sigma).view(rows, cols).double()


def output_error(model, x, y) -> torch.Tensor:
    """One forward and backward of the cross-entropy loss; returns e = ∂L/∂logits."""
    logits = model(x)
    logits.retain_grad()
    F.cross_entropy(logits, y).backward()
    return logits.grad


def record_inputs(model, names):
    """Forward hooks keeping each named layer's input, with its gradient retained."""
    seen = {}

    def keep(name):
        def hook(module, args):
            if args[0].requires_grad:
                args[0].retain_grad()
            seen[name] = args[0]
        return hook
    for name in names:
        getattr(model, name).register_forward_pre_hook(keep(name))
    return seen


def record_output(module) -> dict:
    """A forward hook keeping the module's output (under key "down", whatever the module), with its gradient retained."""
    seen = {}

    def keep(mod, args, output):
        output.retain_grad()
        seen["down"] = output
    module.register_forward_hook(keep)
    return seen


def test_rules_are_registered_and_parse_with_modifiers():
    assert set(DIRECT_RULES) <= set(list_rules("d*"))
    assert parse_rule("dfa+const+bm").modifiers == ("const", "bm")


def test_dfa_input_gradient_is_D_times_e(monkeypatch):
    monkeypatch.setattr(_tiles, "TILE_ELEMENTS", 40)  # several tiles per matrix
    model = tiny_cnn()
    handle = apply(model, "dfa", seed=2)
    inputs = record_inputs(model, ["down", "same", "hidden", "head"])
    e = output_error(model, *batch())
    for name in ("down", "same", "hidden", "head"):
        d_in = inputs[name][0].numel()
        d = hand_drawn(2, name, "dfa", d_in, CLASSES, math.sqrt(2 / d_in))
        torch.testing.assert_close(handle.feedback(name), d, rtol=0, atol=0)
        # δx of each layer is D e; BatchNorm, ReLU and the residual add pass it on exactly
        if name != "same":  # "same"'s input also gets the residual path's gradient
            torch.testing.assert_close(inputs[name].grad, (e @ d.t()).view_as(inputs[name]), rtol=1e-12, atol=1e-15)
    # the head's weight gradient uses e itself; 'hidden' computes its own from the D e that reached it
    torch.testing.assert_close(model.head.weight.grad, e.t() @ F.relu(model.hidden(inputs["hidden"])).detach())
    delta_hidden = inputs["head"].grad * (inputs["head"] > 0)
    torch.testing.assert_close(model.hidden.weight.grad, delta_hidden.t() @ inputs["hidden"].detach())
    described = handle.describe()
    assert described["feedback_form"] == "materialised" and described["feedback_matrices"] == 4  # not the stem


def test_dense_fa_conv_is_dense_bt_delta_and_linear_is_fa():
    model = tiny_cnn()
    handle = apply(model, "dense-fa", seed=4)
    inputs = record_inputs(model, ["down", "same", "hidden"])
    x, y = batch()
    out = record_output(model.down)
    F.cross_entropy(model(x), y).backward()
    delta = out["down"].grad.reshape(len(x), -1)
    d_in, d_out = inputs["down"][0].numel(), out["down"][0].numel()
    b = hand_drawn(4, "down", "dense-fa", d_out, d_in, math.sqrt(2 / d_in))
    torch.testing.assert_close(handle.feedback("down"), b, rtol=0, atol=0)
    torch.testing.assert_close(inputs["down"].grad, (delta @ b).view_as(inputs["down"]), rtol=1e-12, atol=1e-15)
    fa_model = tiny_cnn()
    apply(fa_model, "fa", seed=4)
    assert torch.equal(model.hidden.feedback_weight, fa_model.hidden.feedback_weight)


def test_dfa_conv_is_a_transposed_conv_of_e_repeated_over_positions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(5, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, CLASSES)).double()
    handle = apply(model, "dfa-conv", seed=0)
    seen = {}
    for index in (2, 4):
        model[index].register_forward_pre_hook(lambda m, args, i=index: seen.setdefault(i, args[0]).retain_grad())
    x, y = batch()
    e = output_error(model, x, y)
    for index, stride in ((2, 2), (4, 1)):
        channels = seen[index].shape[1]
        kernel = handle.feedback(str(index)).view(CLASSES, channels, 3, 3)
        assert torch.equal(kernel.flatten(1), hand_drawn(0, str(index), "dfa-conv", CLASSES, channels * 9,
                                                          math.sqrt(2 / (channels * 9 * 4 * 4))))
        repeated = e[:, :, None, None].expand(len(x), CLASSES, 4, 4)  # BioTorch's literal form
        expected = torch.nn.grad.conv2d_input(seen[index].shape, kernel, repeated, stride=stride, padding=1)
        torch.testing.assert_close(seen[index].grad, expected, rtol=1e-12, atol=1e-15)
        assert not torch.allclose(expected[:, :, 0, 0], expected[:, :, 1, 1])  # the borders differ


def sylvester(n: int) -> torch.Tensor:
    """Sylvester's Hadamard matrix by its recursive definition, H_2m = [[H_m, H_m], [H_m, -H_m]]."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def test_walsh_hadamard_is_sylvesters_matrix_times_x():
    from fabench.rules._direct import walsh_hadamard
    for n in (1, 2, 8, 32, 128):
        x = torch.randn(3, 2, n, dtype=torch.float64)
        torch.testing.assert_close(walsh_hadamard(x), x @ sylvester(n), rtol=1e-12, atol=1e-12)


def test_dfa_wht_input_gradient_is_signed_hadamard_blocks_times_e(monkeypatch):
    monkeypatch.setattr(_tiles, "TILE_ELEMENTS", 40)  # the signs come in several tiles too
    model = tiny_cnn()
    handle = apply(model, "dfa-wht", seed=2)
    inputs = record_inputs(model, ["down", "same", "hidden", "head"])
    e = output_error(model, *batch())
    width = 8  # the smallest power of two >= 7 classes
    for name in ("down", "hidden", "head"):
        d_in = inputs[name][0].numel()
        blocks = -(-d_in // width)
        signs = hand_drawn(2, name, "dfa-wht", blocks, CLASSES, 1.0).sign()
        block_rows = [sylvester(width)[:, :CLASSES] * signs[b] for b in range(blocks)]
        d = torch.cat(block_rows)[:d_in] * math.sqrt(2 / d_in)  # ±std, dfa's std
        torch.testing.assert_close(handle.feedback(name), d, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(inputs[name].grad, (e @ d.t()).view_as(inputs[name]),
                                   rtol=1e-10, atol=1e-14)
    # what it holds: one sign per block and class, about d_in numbers per layer (dfa: d_in · classes)
    held = sum(-(-inputs[n][0].numel() // width) * CLASSES for n in ("down", "same", "hidden", "head"))
    assert handle.describe()["feedback_matrix_mib"] == round(model.head.weight.element_size() * held / 2**20, 3)


@pytest.mark.parametrize("rule", DIRECT_RULES)
def test_tiled_and_materialised_forms_give_the_same_gradients(rule, monkeypatch):
    monkeypatch.setattr(_tiles, "TILE_ELEMENTS", 50)
    x, y = batch()
    results = {}
    for memory in ("materialised", "tiled", "1KB"):
        model = tiny_cnn()
        handle = apply(model, rule, seed=3, feedback_memory=memory)
        results[memory] = grads(model, x, y)
        described = handle.describe()
        held = [n for n, _ in model.named_buffers() if n.endswith("feedback_matrix")]
        assert described["feedback_form"] == ("materialised" if memory == "materialised" else "tiled")
        assert bool(held) == (memory == "materialised")
    if rule == "dense-fa":
        assert described["feedback_matrix_mib"] * 2**20 > 1000  # the 1KB budget forced tiles
    for name, grad in results["materialised"].items():
        torch.testing.assert_close(results["tiled"][name], grad, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(results["1KB"][name], grad, rtol=1e-12, atol=1e-15)


MATRIX_DIGESTS = """
import hashlib, torch
from torch import nn
from fabench.rules import apply
torch.set_num_threads(1)
model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2), nn.ReLU(),
                      nn.Flatten(), nn.Linear(45, 7))
handle = apply(model, RULE, seed=SEED, feedback_memory=MEMORY, input_shape=(3, 8, 8))
digests = [hashlib.sha256(handle.feedback(n).numpy().tobytes()).hexdigest()[:16] for n in ("2", "5")]
"""


def matrix_digests(rule: str, seed: int, memory: str) -> list[str]:
    """Digests of layers '2' and '5''s matrices, computed by MATRIX_DIGESTS in this process."""
    scope = {"RULE": rule, "SEED": seed, "MEMORY": memory}
    exec(MATRIX_DIGESTS, scope)
    return scope["digests"]


@pytest.mark.parametrize("rule", ("dfa", "dense-fa"))
def test_same_seed_same_matrices_in_another_process(rule):
    script = f"RULE, SEED, MEMORY = {rule!r}, 5, 'tiled'\n{MATRIX_DIGESTS}\nprint(' '.join(digests))"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert matrix_digests(rule, 5, "materialised") == other
    assert matrix_digests(rule, 6, "materialised")[0] != other[0]


def test_input_shape_plans_at_apply_without_touching_training_state():
    model = tiny_cnn().train()
    stats = model.bn.running_mean.clone()
    handle = apply(model, "dfa", input_shape=(3, 8, 8), feedback_memory="tiled")
    described = handle.describe()
    assert described["feedback_form"] == "tiled" and described["feedback_matrices"] == 4
    assert model.training and torch.equal(model.bn.running_mean, stats)
    assert apply(tiny_cnn(), "dfa").describe()["feedback_form"] == "pending"


@pytest.mark.parametrize("rule", DIRECT_RULES)
def test_remove_restores_plain_backprop(rule):
    model = tiny_cnn()
    x, y = batch()
    keys, expected = list(model.state_dict()), grads(model, x, y)
    handle = apply(model, rule, feedback_memory="materialised")
    changed = grads(model, x, y)
    assert not torch.allclose(changed["down.weight"], expected["down.weight"])
    handle.remove()
    assert list(model.state_dict()) == keys
    assert all("feedback_matrix" not in n for n, _ in model.named_buffers())
    assert not model._forward_hooks and not model._forward_pre_hooks
    for name, grad in grads(model, x, y).items():
        assert torch.equal(grad, expected[name]), name


def test_matrices_stay_out_of_checkpoints():
    model = tiny_cnn()
    apply(model, "dfa", feedback_memory="materialised")
    grads(model, *batch())
    assert any(n.endswith("feedback_matrix") for n, _ in model.named_buffers())
    assert not any(k.endswith("feedback_matrix") for k in model.state_dict())


def run_steps(model, handle, steps=3, lr=0.5, **opt):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, **opt)
    handle.attach_optimizer(optimizer)
    x, y = batch()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        yield


def test_modifiers_act_on_direct_rules():
    model = tiny_cnn()
    handle = apply(model, "dfa+const+ei")
    norms = {n: m.weight.detach().norm().clone() for n, m in handle.layers.items()}
    signs = {n: torch.sign(m.weight.detach()).clone() for n, m in handle.layers.items()}
    for _ in run_steps(model, handle, momentum=0.9):
        for name, module in handle.layers.items():
            torch.testing.assert_close(module.weight.detach().norm(), norms[name])
            assert (module.weight.detach() * signs[name] >= 0).all(), name
    model = tiny_cnn()
    handle = apply(model, "dense-fa+bm")
    before = {n: m.weight.detach().clone() for n, m in handle.layers.items()}
    next(run_steps(model, handle, steps=1, lr=1.0))
    for name, module in handle.layers.items():
        assert set((before[name] - module.weight.detach()).abs().unique().tolist()) <= {0.0, 1.0}, name


def test_compiled_dfa_gives_the_eager_gradients():
    model = tiny_cnn().float()
    apply(model, "dfa", seed=0)
    x, y = batch()
    eager = grads(model, x.float(), y)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(torch.compile(model)(x.float()), y).backward()
    compiled = {n: p.grad for n, p in model.named_parameters()}
    for name, grad in eager.items():
        torch.testing.assert_close(compiled[name], grad, rtol=1e-5, atol=1e-6)


def learning_layers(model, layers) -> set[str]:
    """Covered layers whose weight gets a nonzero gradient from one step on a fixed batch."""
    torch.manual_seed(2)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
    return {n for n, m in layers.items() if m.weight.grad is not None and m.weight.grad.abs().sum() > 0}


@pytest.mark.parametrize("rule", DIRECT_RULES)
def test_direct_rules_run_on_timm_models(rule):
    for factory in (lambda: timm.create_model("resnet18", num_classes=10),
                    lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, depth=2)):
        torch.manual_seed(0)
        model = factory().train()
        handle = apply(model, rule, input_shape=(3, 32, 32), exclude=["blocks.*"] if rule == "dense-fa" else ())
        learning = learning_layers(model, handle.layers)
        with handle.exact_backprop():  # timm zero-initialises each block's last BN: bp's conv1 get 0 there
            assert learning >= learning_layers(model, handle.layers), rule
        assert handle.describe()["feedback_form"] == "materialised"


class TupleOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x), x


class BatchFolding(nn.Module):
    """A Linear that sees [2·batch, 2] rows, as window-partitioned attention does."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.fc = nn.Linear(2, 2), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.inner(x.reshape(-1, 2)).reshape(x.shape[0], 4))


def test_dfa_refuses_what_it_cannot_serve_with_one_clear_error():
    model = TupleOutput()
    apply(model, "dfa")
    with pytest.raises(FabenchError, match=r"output to be the logits tensor \[batch, classes\], got tuple"):
        model(torch.randn(2, 4))
    model = BatchFolding()
    apply(model, "dfa")
    with pytest.raises(FabenchError, match=r"layer 'inner' sees a first dimension of 4 .* has 2 rows"):
        model(torch.randn(2, 4, requires_grad=True)).sum().backward()
    model = tiny_cnn()
    apply(model, "dfa")
    hidden = record_output(model.hidden)
    model(batch()[0])
    with pytest.raises(FabenchError, match=r"layer 'hidden' ran its backward before the output error"):
        hidden["down"].sum().backward()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, CLASSES, 3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten()).double()
    apply(model, "dense-fa")
    grads(model, *batch(size=8))
    with pytest.raises(FabenchError, match=r"layer '2' was planned for inputs of shape \(4, 6, 6\)"):
        grads(model, *batch(size=10))


@pytest.mark.parametrize("value", ("lots", "12 parsecs", "-3MB"))
def test_bad_feedback_memory_is_one_clear_error(value):
    with pytest.raises(FabenchError, match="feedback memory must be auto, materialised, tiled or a size"):
        apply(tiny_cnn(), "dfa", feedback_memory=value)


def test_budget_sizes_parse_and_decide_the_form():
    policy = _tiles.parse_feedback_memory("512MB")
    assert policy.budget_bytes == 512 * 10**6 and policy.form_for(10**9) == "tiled"
    assert _tiles.parse_feedback_memory("2GiB").form_for(2**31) == "materialised"
    assert _tiles.parse_feedback_memory("auto").form_for(2 * _tiles.AUTO_BUDGET_BYTES) == "tiled"


def mnist_accuracy(rule: str, steps: int = 150) -> float:
    """Test accuracy of a small CNN after ``steps`` Adam steps on the embedded MNIST sample.

    A small tanh CNN rather than LeNet: DFA and FA learn LeNet's ReLU/max-pool stack far more
    slowly (≈ 0.2 after 150 steps), which would make this test minutes long on a CPU.
    """
    from fabench.data import load_dataset

    data = load_dataset("mnist-mini")
    mean, std = data.mean[0], data.std[0]

    def prep(images):
        return (images.float() / 255 - mean) / std

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.Tanh(),
                          nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(32 * 7 * 7, 10))
    handle = apply(model, rule, seed=0, input_shape=(1, 28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    handle.attach_optimizer(optimizer)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(0, len(data.y_train), (64,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(prep(data.x_train[index])), data.y_train[index]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(prep(data.x_test[:1000])).argmax(1)
    return (predicted == data.y_test[:1000]).float().mean().item()


@pytest.mark.parametrize("rule", DIRECT_RULES)
def test_direct_rules_learn_mnist_well_above_chance(rule):
    accuracy = mnist_accuracy(rule)
    assert accuracy > 0.6, f"{rule}: {accuracy:.3f} after 150 steps (chance 0.1)"


def test_copying_a_handled_model_keeps_the_rule_working():
    model = tiny_cnn()
    apply(model, "dfa")
    x, y = batch()
    expected = grads(model, x, y)
    twin = copy.deepcopy(model)
    for name, grad in grads(twin, x, y).items():
        torch.testing.assert_close(grad, expected[name])


def test_autocast_keeps_float32_gradients():
    model = tiny_cnn().float()
    apply(model, "dfa")
    x, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x.float())
    assert logits.dtype == torch.bfloat16
    F.cross_entropy(logits.float(), y).backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())


def test_feedback_memory_bench_computes_sizes_and_skips_what_would_not_fit():
    from fabench.bench.feedback_memory import run_feedback_memory_benchmark

    rows = run_feedback_memory_benchmark(["arch1"], ["dfa", "dense-fa"], steps=1, batch_size=4,
                                         max_materialise_bytes=1 << 20, max_step_seconds=300)
    by_form = {(r.rule, r.form): r for r in rows}
    # arch1 at 24 px: conv2 reads 64x10x10 and writes 64x6x6; fc layers read 576, 384, 192
    assert by_form["dense-fa", "tiled"].arithmetic.matrix_mib == pytest.approx(6400 * 2304 * 4 / 2**20)
    assert by_form["dfa", "tiled"].arithmetic.matrix_mib == pytest.approx((6400 + 576 + 384 + 192) * 10 * 4 / 2**20)
    assert by_form["dense-fa", "materialised"].note.startswith("not allocated: needs")
    assert by_form["dense-fa", "materialised"].step_s is None
    assert by_form["dfa", "materialised"].held_mib == pytest.approx(by_form["dfa", "tiled"].arithmetic.matrix_mib)
    assert by_form["dense-fa", "tiled"].held_mib == 0 and by_form["dense-fa", "tiled"].step_s > 0
