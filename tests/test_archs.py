"""Architectures: shapes of fabench's own models, name resolution across sources, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fabench.archs import check_arch, create_model, default_image_size, list_archs
from fabench.archs.alexnet import CIFAR_LAYOUT, IMAGENET_LAYOUT
from fabench.archs.cifar_resnet import ZeroPadShortcut
from fabench.errors import FabenchError

OWN_ARCHS = (
    "alexnet",
    "arch1",
    "lenet",
    "lenet-biotorch",
    "mlp",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
)

# (arch, in_chans, image_size, batch): each architecture at the sizes it is meant for
INTENDED_SIZES = [
    ("arch1", 3, 24, 2),
    ("arch1", 1, 28, 2),
    ("lenet", 1, 28, 2),
    ("lenet", 1, 32, 2),
    ("lenet", 3, 32, 2),
    *[(f"resnet{d}", 3, 32, 2) for d in (20, 32, 44, 56, 110)],
    ("resnet20", 1, 28, 2),
    ("alexnet", 3, 32, 2),
    ("alexnet", 1, 28, 2),
    ("alexnet", 3, 224, 1),
]

PLAIN_MODULES = (
    nn.Sequential,
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
    ZeroPadShortcut,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("arch", "in_chans", "size", "batch"), INTENDED_SIZES)
def test_own_archs_give_logits_at_intended_sizes(arch, in_chans, size, batch):
    model, source = create_model(arch, num_classes=7, in_chans=in_chans, image_size=size)
    assert source == "fabench"
    with torch.no_grad():
        logits = model.eval()(torch.randn(batch, in_chans, size, size))
    assert logits.shape == (batch, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", OWN_ARCHS)
def test_own_archs_are_plain_modules_with_default_size(arch):
    model, _ = create_model(arch, num_classes=10)
    leaves = [m for m in model.modules() if not list(m.children())]
    assert all(isinstance(m, PLAIN_MODULES) for m in leaves), {type(m).__name__ for m in leaves}


def test_arch1_matches_the_paper_at_24px():
    model, _ = create_model("arch1", num_classes=10, image_size=24)
    widths = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [(576, 384), (384, 192), (192, 10)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 64, (5, 5), (0, 0)),
        (64, 64, (5, 5), (0, 0)),
    ]


@pytest.mark.parametrize(("in_chans", "size"), [(1, 28), (1, 32), (3, 32)])
def test_lenet_flatten_is_400_at_mnist_and_cifar_sizes(in_chans, size):
    model, _ = create_model("lenet", num_classes=10, in_chans=in_chans, image_size=size)
    assert model.classifier[1].in_features == 400


def test_cifar_resnet_parameter_counts_match_he_et_al():
    # He et al. 2016, Table 6: 0.27M, 0.85M, 1.7M parameters
    counts = {d: n_params(create_model(f"resnet{d}", num_classes=10)[0]) for d in (20, 56, 110)}
    assert counts[20] == 269_722
    assert round(counts[56] / 1e6, 2) == 0.85
    assert round(counts[110] / 1e6, 1) == 1.7


def test_resnet_shortcut_options():
    option_a, _ = create_model("resnet20", num_classes=10)
    assert sum(isinstance(m, ZeroPadShortcut) for m in option_a.modules()) == 2
    option_b, _ = create_model("resnet20", num_classes=10, shortcut="b")
    one_by_one = [
        m for m in option_b.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
    ]
    assert len(one_by_one) == 2
    assert option_b(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(FabenchError, match="shortcut"):
        create_model("resnet20", num_classes=10, shortcut="c")
    with pytest.raises(FabenchError, match="does not take options"):
        create_model("arch1", num_classes=10, width=3)
    # options left at None never reach the constructor
    create_model("arch1", num_classes=10, width=None)


def test_alexnet_layout_follows_input_size():
    small, _ = create_model("alexnet", num_classes=10, image_size=32)
    large, _ = create_model("alexnet", num_classes=1000, image_size=224)
    default, _ = create_model("alexnet", num_classes=10)
    assert small.features[0].kernel_size == (CIFAR_LAYOUT.stem_kernel,) * 2
    assert large.features[0].kernel_size == (IMAGENET_LAYOUT.stem_kernel,) * 2
    assert default.features[0].kernel_size == small.features[0].kernel_size
    assert large.classifier[2].in_features == 256 * 6 * 6


def test_initialisation_is_kaiming_with_zero_bias():
    torch.manual_seed(0)
    model, _ = create_model("arch1", num_classes=10)
    fc1 = model.classifier[1]
    assert torch.all(fc1.bias == 0)
    expected = (2.0 / fc1.in_features) ** 0.5  # ReLU gain, fan-in
    assert abs(fc1.weight.std().item() / expected - 1) < 0.05
    last = model.classifier[-1]
    assert abs(last.weight.std().item() / (1 / last.in_features) ** 0.5 - 1) < 0.15


def test_too_small_inputs_fail_cleanly():
    with pytest.raises(FabenchError, match="larger --image-size"):
        create_model("arch1", num_classes=10, image_size=12)


def test_resolution_order_and_prefixes():
    assert check_arch("resnet20") == ("fabench", "resnet20")
    assert check_arch("alexnet") == ("fabench", "alexnet")
    assert check_arch("resnet18") == ("timm", "resnet18")
    assert check_arch("timm:resnet18") == ("timm", "resnet18")
    assert check_arch("resnet18.a1_in1k") == ("timm", "resnet18.a1_in1k")
    assert check_arch("tv:resnet18") == ("tv", "resnet18")
    assert check_arch("tv:alexnet") == ("tv", "alexnet")
    assert check_arch("fabench:lenet") == ("fabench", "lenet")


def test_timm_models_build_without_weights():
    model, source = create_model("mobilenetv3_small_050", num_classes=7, in_chans=1, image_size=32)
    assert source == "timm"
    assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 7)
    # a ViT receives the input size
    vit, _ = create_model("vit_tiny_patch16_224", num_classes=5, image_size=32)
    assert vit.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_torchvision_models_build_and_adapt_channels():
    model, source = create_model("tv:resnet18", num_classes=4, in_chans=1, image_size=32)
    assert source == "tv"
    assert model.conv1.in_channels == 1
    assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 4)
    tv_alexnet, source = create_model("tv:alexnet", num_classes=3, image_size=224)
    assert source == "tv"
    assert type(tv_alexnet).__module__.startswith("torchvision")


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("lenett", "lenet"),
        ("fabench:lenet5", "fabench:lenet"),
        ("tv:resnet19", "tv:resnet18"),
        ("timm:resnet19", "timm:resnet18"),
    ],
)
def test_unknown_names_list_closest_first(name, closest):
    with pytest.raises(FabenchError) as caught:
        check_arch(name)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"unknown architecture '{name}'")
    assert message.split("closest first): ")[1].split(", ")[0] == closest
    with pytest.raises(FabenchError):
        create_model(name, num_classes=10)


def test_list_archs_covers_all_sources():
    everything = list_archs()
    assert set(OWN_ARCHS) <= set(everything)
    assert "resnet18" in everything and "tv:resnet18" in everything
    assert not any(name.startswith("timm:") for name in everything)  # no collisions today
    assert list(list_archs("fabench:*")) == [
        "alexnet",
        "arch1",
        "lenet",
        "lenet-biotorch",
        "mlp",
        *[f"resnet{d}" for d in (20, 32, 44, 56, 110)],
    ]
    assert all(name.startswith("tv:") for name in list_archs("tv:*"))
    assert "resnet18" in list_archs("timm:resnet1*")
    cifar = list(list_archs("resnet1*"))
    assert cifar.index("resnet18") < cifar.index("resnet110")  # natural sort
    assert all(isinstance(text, str) and text and "\n" not in text for text in everything.values())


def test_default_image_size():
    assert default_image_size("arch1", "cifar10") == 24
    assert default_image_size("fabench:arch1", "cifar10-mini") == 24
    assert default_image_size("resnet20", "cifar10") is None
    assert default_image_size("lenet", "mnist") is None
    assert default_image_size("resnet18", "imagenet") == 224
    assert default_image_size("tv:alexnet", "imagenet") == 224


@pytest.mark.parametrize(
    ("arch", "dataset"),
    [
        ("arch1", "cifar10-mini"),
        ("arch1", "mnist-mini"),
        ("lenet", "mnist-mini"),
        ("alexnet", "cifar10-mini"),
    ],
)
def test_own_archs_take_a_training_step_on_real_batches(arch, dataset):
    from fabench.data import DeviceLoader, load_dataset

    data = load_dataset(dataset, subset=40, image_size=default_image_size(arch, dataset))
    model, _ = create_model(
        arch, num_classes=data.num_classes, in_chans=data.in_chans, image_size=data.image_size
    )
    x, y = next(DeviceLoader(data).train_batches(8, torch.Generator().manual_seed(0)))
    assert x.shape[-1] == data.image_size == (24 if arch == "arch1" else data.native_size)
    nn.functional.cross_entropy(model.train()(x), y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
