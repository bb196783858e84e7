"""The work model's pricing of direct rules' products with held matrices (fabench.bench.work_model)."""

import pytest
import torch

from fabench.archs import create_model
from fabench.bench.work_model import LayerWork, Rates, Work, roofline_seconds, step_work
from fabench.rules import apply

RATES = dict(flop_per_s=1e12, byte_per_s=10e9, s_per_draw=0.0, product_byte_per_s=5e9)


def _work(matrix_bytes: float) -> Work:
    """One layer whose only work is a memory-bound product reading ``matrix_bytes``."""
    return Work([LayerWork("fc", products=[(1.0, matrix_bytes, matrix_bytes)])])


def test_matrices_larger_than_the_cache_are_priced_at_the_product_rate():
    rates = Rates(**RATES, cache_bytes=100e6)
    assert roofline_seconds(_work(1e9), rates) == pytest.approx(1e9 / 5e9)


def test_matrices_that_fit_in_the_cache_are_priced_at_the_copy_bandwidth():
    rates = Rates(**RATES, cache_bytes=2e9)
    assert roofline_seconds(_work(1e9), rates) == pytest.approx(1e9 / 10e9)


def test_rates_without_a_product_rate_price_products_at_the_copy_bandwidth():
    rates = Rates(flop_per_s=1e12, byte_per_s=10e9, s_per_draw=0.0)
    assert roofline_seconds(_work(1e9), rates) == pytest.approx(1e9 / 10e9)


def test_dfa_products_carry_their_matrices_bytes():
    torch.manual_seed(0)
    model, _ = create_model("mlp", num_classes=10, in_chans=1, image_size=8, hidden=32)
    handle = apply(model, "dfa", seed=0, input_shape=(1, 8, 8))
    x = torch.randn(4, 1, 8, 8)
    torch.nn.functional.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()
    work = step_work(model, handle, x)
    held = sum(handle.direct_feedback(name).matrix().numel for name in handle.layers
               if handle.direct_feedback(name) is not None and any(layer.products for layer in work.layers
                                                                   if layer.name == name))
    assert work.matrix_bytes == 4 * held > 0
    bp_model, _ = create_model("mlp", num_classes=10, in_chans=1, image_size=8, hidden=32)
    assert step_work(bp_model, apply(bp_model, "bp", seed=0), x).matrix_bytes == 0
