"""Every option does what it says: one test per defect of issue 11 that the bad-input matrix
(tests/test_cli_errors.py) cannot show, and tests that would have passed with the feature broken,
made to fail."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from cli_helpers import cli
from torch import nn

from fabench.errors import FabenchError
from fabench.rules import apply
from fabench.tasks._spec import Cell
from fabench.tasks.cell_run import run_cell
from fabench.train import run
from fabench.train.config import RunConfig

QUICK = dict(arch="lenet", dataset="mnist-mini", subset=256, batch_size=64, epochs=1, diagnostics="off", device="cpu")


def _npz(path: Path, y_train=None, **extra) -> str:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    y = np.arange(40) % 10 if y_train is None else y_train
    np.savez(path, x_train=x, y_train=y, x_test=x[:10], y_test=np.arange(10), **extra)
    return str(path)


# --- data -------------------------------------------------------------------------------------


def test_a_training_label_out_of_range_is_refused(tmp_path):
    labels = np.arange(40) % 10
    labels[3] = 99
    config = RunConfig(**{**QUICK, "dataset": _npz(tmp_path / "d.npz", labels), "subset": None, "batch_size": 8},
                       results_dir=str(tmp_path / "r"))
    with pytest.raises(FabenchError, match=r"y_train holds label 99 but 89 of the classes 0\.\.99 have no image"):
        run(config)
    assert not (tmp_path / "r").exists()


def test_wrong_keys_are_named(tmp_path):
    from fabench.data import load_dataset

    np.savez(tmp_path / "w.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2, np.int64))
    with pytest.raises(FabenchError, match="the file holds images, labels"):
        load_dataset(str(tmp_path / "w.npz"))


def test_a_file_dataset_is_identified_by_its_content_not_its_path(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _npz(tmp_path / "a" / "d.npz")
    second = _npz(tmp_path / "b" / "d.npz", y_train=(np.arange(40) + 1) % 10)
    copy = tmp_path / "b" / "copy.npz"
    copy.write_bytes(Path(first).read_bytes())
    ids = [RunConfig(rule="bp", dataset=p).run_id for p in (first, second, str(copy))]
    assert ids[0] != ids[1] and ids[0] == ids[2]


# --- records ----------------------------------------------------------------------------------


def test_a_run_piped_into_head_still_records_its_result(tmp_path):
    script = Path(sys.executable).with_name("fabench")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "fabench"]
    args = ["run", "--rule", "bp", "--arch", "lenet", "--dataset", "mnist-mini", "--subset", "256", "--epochs", "2",
            "--batch-size", "64", "--diagnostics", "off", "--no-progress", "--results-dir", str(tmp_path)]
    process = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    process.stdout.readline()  # like `| head -1`: read one line, then hang up
    process.stdout.close()
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()
    (row,) = list(csv.DictReader((tmp_path / "runs.csv").read_text(encoding="utf-8").splitlines()))
    assert row["status"] == "finished" and row["epochs_done"] == "2"


def test_no_lock_file_stays_behind_a_finished_run(tmp_path):
    result = run(RunConfig(**QUICK, rule="bp", results_dir=str(tmp_path)))
    assert not list(result.run_dir.glob(".lock")) and not list(result.run_dir.glob("*.lock"))


def test_a_cell_finished_by_another_grid_is_reported_as_such(tmp_path):
    config = RunConfig(**QUICK, rule="bp", results_dir=str(tmp_path))
    run(config)  # "another grid" finished it after this one looked
    outcome = run_cell(Cell("bp", "lenet", "mnist-mini", 0, None, config), force=False, on_event=None)
    assert outcome.status == "skipped" and "by another process" in outcome.error and outcome.seconds == 0.0


def test_a_runs_csv_with_a_byte_that_is_not_utf8_still_works(tmp_path, capsys):
    run(RunConfig(**QUICK, rule="bp", results_dir=str(tmp_path)))
    path = tmp_path / "runs.csv"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1] + lines[1].replace(b"bp,lenet", b"b\xff,lenet").replace(b",finished,", b",unstable,"))
    code, out, err = cli(capsys, "table", "--results-dir", str(tmp_path), "--format", "markdown")
    assert code == 0 and "runs.csv:3: row is not UTF-8 text; skipped" in err and "| lenet |" in out
    run(RunConfig(**QUICK, rule="fa-usf", results_dir=str(tmp_path)))  # the writer keeps the bad row as it was
    assert b"b\xff,lenet" in path.read_bytes()


# --- rule options -----------------------------------------------------------------------------


def test_sn_norm_and_ei_mode_are_run_options_in_run_id_and_manifest(tmp_path):
    import json

    spectral = run(RunConfig(**QUICK, rule="fa-usf-sn", sn_norm="spectral", results_dir=str(tmp_path)))
    fro = RunConfig(**QUICK, rule="fa-usf-sn", results_dir=str(tmp_path))
    assert spectral.row["run_id"] != fro.run_id and spectral.row["sn_norm"] == "spectral"
    manifest = json.loads((spectral.run_dir / "manifest.json").read_text())
    assert manifest["rule"]["options"]["sn_norm"] == "spectral" and manifest["rule"]["kind"] == "sn"
    keep = RunConfig(**QUICK, rule="fa-usf+ei", ei_mode="keep-sign")
    assert keep.run_id != RunConfig(**QUICK, rule="fa-usf+ei").run_id


def test_multihead_attention_out_proj_is_refused_by_name_not_counted_covered():
    model = nn.Sequential(nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True))
    with pytest.raises(FabenchError, match=r"layer '0.self_attn.out_proj' is nn.MultiheadAttention's output projection"):
        apply(model, "fa")
    handle = apply(model, "fa", exclude=["*.out_proj"])
    assert "0.self_attn.out_proj" in handle.excluded and "0.self_attn.out_proj" not in handle.layers


def test_feedback_of_a_weight_standardising_layer_follows_the_weight_it_really_uses():
    torch.manual_seed(0)
    model = nn.Sequential(timm.layers.StdConv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    handle = apply(model, "fa-usf")
    with pytest.raises(FabenchError, match="run one forward pass"):
        handle.feedback("0")
    model(torch.randn(2, 3, 6, 6))
    conv = model[0]
    flat = conv.weight.detach().reshape(4, -1)
    standardised = ((flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, unbiased=False, keepdim=True) + conv.eps))
    expected = conv.feedback_scale * torch.sign(standardised.reshape_as(conv.weight))
    torch.testing.assert_close(handle.feedback("0"), expected)
    assert not torch.equal(torch.sign(handle.feedback("0")), torch.sign(conv.weight.detach()))


def test_the_first_layer_forms_no_feedback_and_draws_nothing_from_the_rng():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    apply(model, "fa-brsf", exclude=["2"])  # only the conv is covered, and its input needs no gradient
    loss = model(torch.randn(2, 3, 6, 6)).sum()
    state = torch.get_rng_state()
    loss.backward()
    assert torch.equal(torch.get_rng_state(), state)
    assert model[0].weight.grad is not None


# --- tests that would have passed with the feature broken -------------------------------------


def test_an_intercepted_conv2dsame_sends_dx_through_b():
    torch.manual_seed(0)
    conv = timm.layers.Conv2dSame(3, 4, 4, stride=2).double()
    model = nn.Sequential(conv)
    handle = apply(model, "fa", seed=1)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(model(x))
    (dx,) = torch.autograd.grad((model(x) * g).sum(), x)
    b = handle.feedback("0").detach()
    ref_x = x.detach().clone().requires_grad_(True)
    padded = timm.layers.pad_same(ref_x, conv.kernel_size, conv.stride, conv.dilation)
    (expected,) = torch.autograd.grad((F.conv2d(padded, b, None, conv.stride) * g).sum(), ref_x)
    torch.testing.assert_close(dx, expected)
    assert not torch.allclose(b, conv.weight.detach())


@pytest.mark.parametrize("rule", ["fa", "fa-usf-sn", "dfa"])
def test_autocast_gradients_match_a_float32_reference_in_value(rule):
    def grads(amp: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(8 * 4 * 4, 10))
        apply(model, rule, seed=0)
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), torch.arange(4))
        loss.backward()
        return [p.grad for p in model.parameters()]

    for low, ref in zip(grads(True), grads(False), strict=True):
        cosine = F.cosine_similarity(low.flatten(), ref.flatten(), dim=0)
        assert cosine > 0.99 and (low - ref).norm() <= 0.1 * ref.norm()


@pytest.mark.parametrize("optimizer", ["adam", "sgd-weight-decay"])
def test_const_holds_the_norm_under_adam_and_under_weight_decay(optimizer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    handle = apply(model, "fa-usf-sn+const")
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    handle.attach_optimizer(opt)
    norms = {n: m.weight.detach().norm().clone() for n, m in handle.layers.items()}
    start = {n: m.weight.detach().clone() for n, m in handle.layers.items()}
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.arange(4)).backward()
        opt.step()
    for name, module in handle.layers.items():
        torch.testing.assert_close(module.weight.detach().norm(), norms[name])
        assert (module.weight.detach() - start[name]).abs().max() > 1e-3, name


@pytest.mark.parametrize("rule", ["bp", "fa", "fa-usf", "dfa"])  # one per family: bp, random, sign, direct
def test_two_seeds_give_different_weights_and_curves(rule, tmp_path):
    results = [run(RunConfig(**QUICK, rule=rule, seed=seed, results_dir=str(tmp_path))) for seed in (0, 1)]
    weights = [torch.load(r.run_dir / "last.pt", map_location="cpu", weights_only=True)["model"] for r in results]
    forward = [n for n in weights[0] if n.endswith(".weight")]  # a layer's own weight, never its feedback_weight
    same = [n for n in forward if torch.equal(weights[0][n], weights[1][n])]
    assert forward and not same, same
    losses = [[row["value"] for row in csv.DictReader((r.run_dir / "curves.csv").read_text().splitlines())
               if row["metric"] == "loss"] for r in results]
    assert losses[0] != losses[1]
