"""The counter-based streams behind dfa's and dense-fa's matrices: the definition, any range alone, the levels' moments."""

from __future__ import annotations

import math

import pytest
import torch

from fabench.rules import _counter_rng, _tiles
from fabench.rules._tiles import RandomMatrix
from tests.test_dfa import splitmix64_word, stream_bytes

KEYS = (0, 12345, (1 << 64) - 1, 0x8000000000000001)  # the last two wrap through int64's sign


@pytest.mark.parametrize("key", KEYS)
def test_words_are_splitmix64_of_the_key(key):
    got = _counter_rng.words(key, 1000, 16, _counter_rng.Workspace(16 * 8, "cpu"))
    expected = [_counter_rng.as_int64(splitmix64_word(key, w)) for w in range(1000, 1016)]
    assert got.tolist() == expected


@pytest.mark.parametrize("start, count", [(0, 64), (3, 5), (13, 40), (8, 8)])
def test_any_range_is_the_same_slice_of_the_stream(start, count):
    whole = stream_bytes(KEYS[2], 64)
    got = _counter_rng.signed_bytes(KEYS[2], start, count, _counter_rng.Workspace(count, "cpu"))
    assert torch.equal(got, whole[start:start + count])


def test_the_matrix_does_not_depend_on_the_tile_size(monkeypatch):
    matrix = RandomMatrix(seed=4, name="layer", purpose="dfa", rows=37, cols=11, std=0.3)
    reference = matrix.materialise(device="cpu")
    for elements in (1, 11, 50, 1 << 18):
        monkeypatch.setattr(_tiles, "TILE_ELEMENTS", elements)
        assert torch.equal(matrix.materialise(device="cpu"), reference)
        tiled = torch.cat([tile.clone() for _, _, tile in matrix.tiles(device="cpu", dtype=torch.float32)])
        assert torch.equal(tiled, reference)


def test_entries_are_256_symmetric_levels_with_the_std_asked_for():
    std = 0.05
    entries = RandomMatrix(seed=0, name="big", purpose="dfa", rows=1000, cols=1000, std=std).materialise(device="cpu")
    levels = entries.double() / std * _counter_rng.LEVEL_STD
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # odd integers 2b + 1
    counts = torch.bincount(((levels.round() + 255) / 2).long().view(-1), minlength=256)
    assert counts.numel() == 256 and counts.min() > 0
    expected = entries.numel() / 256
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 255 + 6 * math.sqrt(2 * 255)  # 255 degrees of freedom, six standard deviations
    n = entries.numel()
    assert abs(float(entries.mean())) < 5 * std / math.sqrt(n)
    assert float(entries.std()) == pytest.approx(std, rel=0.01)


def test_neighbours_and_other_layers_are_uncorrelated():
    def draw(name):
        return RandomMatrix(seed=0, name=name, purpose="dfa", rows=500, cols=400, std=1.0).materialise(device="cpu")
    a, b = draw("a"), draw("b")
    pairs = {"next entry": (a.view(-1)[:-1], a.view(-1)[1:]), "next row": (a[:-1], a[1:]),
             "next word": (a.view(-1)[:-8], a.view(-1)[8:]), "other layer": (a, b)}
    for what, (x, y) in pairs.items():
        correlation = float(torch.corrcoef(torch.stack([x.reshape(-1), y.reshape(-1)]))[0, 1])
        assert abs(correlation) < 5 / math.sqrt(x.numel()), what
    assert not torch.equal(draw("a"), RandomMatrix(1, "a", "dfa", 500, 400, 1.0).materialise(device="cpu"))
