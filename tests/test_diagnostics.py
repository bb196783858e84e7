"""Alignment diagnostics: exact values where they are known, a probe that disturbs nothing, reports."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, cli
from torch import nn

from fabench.diagnostics import METRICS, measure, parse_diagnostics, run_hooks
from fabench.diagnostics import hook as hook_module
from fabench.diagnostics.replay import diagnose_checkpoint
from fabench.errors import FabenchError
from fabench.rules import apply
from fabench.train import run as train_run
from fabench.train.config import RunConfig
from fabench.train.schema import DONE_STATUSES

PROBE = 16  # probe images in these tests (runs use fabench.diagnostics.PROBE_IMAGES)




def run(config: RunConfig):
    """A run composed as the CLI composes it: with the probe hooks of its --diagnostics."""
    return train_run(config, hooks=run_hooks(config))


def arch1_with(rule: str, seed: int = 0):
    from fabench.archs import create_model

    torch.manual_seed(seed)
    model, _ = create_model("arch1", num_classes=10, in_chans=3, image_size=24)
    return model, apply(model, rule, seed=seed)


def random_batch(n: int = PROBE, shape=(3, 24, 24)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, *shape, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def by_layer(rows) -> dict[str, dict[str, float]]:
    return {row.name: row.values for row in rows}


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> str:
    """128 training and 32 test images of the CIFAR sample, as an .npz dataset (fast epochs)."""
    import numpy as np

    source = Path(__file__).resolve().parents[1] / "fabench" / "data" / "embedded" / "cifar10-mini.npz"
    path = tmp_path_factory.mktemp("data") / "tiny-cifar.npz"
    with np.load(source) as d:
        np.savez(path, x_train=d["x_train"][:128], y_train=d["y_train"][:128],
                 x_test=d["x_test"][:32], y_test=d["y_test"][:32])
    return str(path)


def tiny_config(tmp_path: Path, dataset: str, **changes) -> RunConfig:
    """arch1 on ``dataset``, batch 32 (4 steps per epoch), 2 epochs, CPU, deterministic."""
    values = dict(arch="arch1", dataset=dataset, batch_size=32, epochs=2, device="cpu",
                  deterministic=True, progress=False, results_dir=str(tmp_path / "results"), task="diag")
    return RunConfig(**{**values, **changes})


# --- values ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "enabled", "every"), [("off", False, None), ("epoch", True, None), ("25", True, 25)])
def test_parse_diagnostics(text, enabled, every):
    schedule = parse_diagnostics(text)
    assert (schedule.enabled, schedule.every_steps) == (enabled, every)


@pytest.mark.parametrize("text", ["0", "-3", "sometimes", "2.5", ""])
def test_parse_diagnostics_rejects(text):
    with pytest.raises(FabenchError, match="--diagnostics must be off, epoch or a positive"):
        parse_diagnostics(text)


def test_bp_angles_are_zero_and_feedback_is_w():
    model, handle = arch1_with("bp")
    rows = measure(model, handle, *random_batch())
    assert [r.name for r in rows] == list(handle.layers)  # arch1 runs its layers in definition order
    assert [r.depth for r in rows] == list(range(len(rows)))
    assert math.isnan(rows[0].values["dx_angle"])  # the image needs no gradient: no δx to compare
    for row in rows:
        v = row.values
        assert row is rows[0] or v["dx_angle"] == pytest.approx(0.0, abs=1e-6)
        assert v["dw_angle"] == pytest.approx(0.0, abs=1e-6)
        assert v["bw_angle"] == pytest.approx(0.0, abs=1e-6)
        assert v["bw_norm_ratio"] == pytest.approx(1.0, abs=1e-12)
        assert v["sign_concordance"] == 1.0
        assert v["dy_norm"] > 0 and v["w_norm"] > 0 and (row is rows[0] or v["dx_norm"] > 0)


def test_fa_is_near_orthogonal_at_init_on_a_wide_layer():
    model, handle = arch1_with("fa")
    values = by_layer(measure(model, handle, *random_batch()))
    wide = values["classifier.1"]  # 576 -> 384
    assert abs(wide["dx_angle"] - 90.0) < 5.0
    assert abs(wide["bw_angle"] - 90.0) < 2.0
    assert abs(wide["sign_concordance"] - 0.5) < 0.02
    # the output layer's δy is the loss gradient under any rule, so its weight gradient is exact
    assert values["classifier.5"]["dw_angle"] == pytest.approx(0.0, abs=1e-6)


def test_usf_is_clearly_below_orthogonal():
    model, handle = arch1_with("fa-usf")
    for name, v in by_layer(measure(model, handle, *random_batch())).items():
        assert name == "features.0" or v["dx_angle"] < 80.0, name
        assert v["sign_concordance"] == 1.0
        # B = s·sign(W): the angle to a Gaussian W is arccos(sqrt(2/π)) ≈ 37°
        assert abs(v["bw_angle"] - 37.0) < 3.0, name


def test_sn_matches_the_norm_of_w():
    model, handle = arch1_with("fa-usf-sn")
    for v in by_layer(measure(model, handle, *random_batch())).values():
        assert v["bw_norm_ratio"] == pytest.approx(1.0, rel=1e-5)


# --- the probe disturbs nothing -------------------------------------------------------------

def bn_dropout_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def snapshot(model, optimizer, generator) -> dict:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "optimizer": {k: {n: t.clone() for n, t in s.items()} for k, s in optimizer.state.items()},
        "modes": [m.training for m in model.modules()],
        "rng": torch.get_rng_state(),
        "data_rng": generator.get_state(),
    }


def assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("rule", ["fa-brsf", "bp"])
def test_probe_leaves_params_grads_optimizer_buffers_modes_and_rng(rule):
    torch.manual_seed(0)
    model = bn_dropout_net()
    handle = apply(model, rule, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = random_batch(16, (3, 8, 8))
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()  # momentum buffers exist, BN statistics moved, num_batches_tracked = 1
    model.eval()  # the loop calls epoch hooks after evaluation: the probe must put eval back
    generator = torch.Generator().manual_seed(3)
    before = snapshot(model, optimizer, generator)
    rows = measure(model, handle, x, y)
    assert_same(before, snapshot(model, optimizer, generator))
    assert len(rows) == 2 and math.isfinite(rows[1].values["dx_angle"])


def test_probe_is_repeatable_with_dropout_and_random_feedback():
    torch.manual_seed(0)
    model = bn_dropout_net()
    handle = apply(model, "fa-brsf", seed=0)
    x, y = random_batch(16, (3, 8, 8))
    first, second = measure(model, handle, x, y), measure(model, handle, x, y)
    assert [r.values for r in first] == [r.values for r in second]


# --- inside a run ---------------------------------------------------------------------------

def probe_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "curves.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["split"] == "probe"]


@pytest.fixture(scope="module")
def paired_runs(tmp_path_factory, tiny_cifar):
    """The same deterministic fa-brsf run (it draws random numbers in backward) twice: diagnostics
    off, and every 3 steps; 4 steps per epoch, 2 epochs, probes of PROBE images."""
    tmp_path = tmp_path_factory.mktemp("paired")
    hook_module.PROBE_IMAGES, saved = PROBE, hook_module.PROBE_IMAGES
    try:
        # separate results folders: diagnostics do not change the result, so both share a run_id
        plain = run(tiny_config(tmp_path / "plain", tiny_cifar, rule="fa-brsf", diagnostics="off"))
        probed = run(tiny_config(tmp_path / "probed", tiny_cifar, rule="fa-brsf", diagnostics="3"))
    finally:
        hook_module.PROBE_IMAGES = saved
    assert plain.status == probed.status and plain.status in DONE_STATUSES
    return plain.run_dir, probed.run_dir


def test_run_logs_probe_rows_at_step_zero_every_n_steps_and_each_epoch(paired_runs):
    plain, probed = paired_runs
    assert not probe_rows(plain)
    rows = probe_rows(probed)
    steps = sorted({int(r["step"]) for r in rows})
    assert steps == [0, 3, 4, 6, 8]  # every 3 steps, plus each epoch's end (steps 4 and 8)
    epoch_of = {int(r["step"]): int(r["epoch"]) for r in rows}
    assert epoch_of == {0: 0, 3: 0, 4: 1, 6: 1, 8: 2}  # epochs completed when the probe ran
    at_zero = [r for r in rows if r["step"] == "0"]
    depth = {r["layer"]: int(float(r["value"])) for r in at_zero if r["metric"] == "depth"}
    assert depth == {"features.0": 0, "features.3": 1, "classifier.1": 2, "classifier.3": 3, "classifier.5": 4}
    assert {r["metric"] for r in at_zero} == set(METRICS)


def test_checkpoint_diagnostics_equal_the_logged_ones(paired_runs):
    _, probed = paired_runs
    logged = {(r["layer"], r["metric"]): float(r["value"]) for r in probe_rows(probed) if r["step"] == "8"}
    progress, rows = diagnose_checkpoint(probed, images=PROBE)
    assert (progress["epoch"], progress["global_step"]) == (2, 8)
    again = {(row.name, "depth"): float(row.depth) for row in rows}
    again.update({(row.name, metric): value for row in rows for metric, value in row.values.items()})
    assert again.keys() == logged.keys()
    first_dx = {("features.0", "dx_angle"), ("features.0", "dx_norm")}  # NaN: the image sends no δx
    assert all(math.isfinite(v) for k, v in again.items() if k not in first_dx)
    assert all(math.isnan(again[k]) and math.isnan(logged[k]) for k in first_dx)
    assert {k: v for k, v in again.items() if k not in first_dx} == {k: v for k, v in logged.items() if k not in first_dx}


def test_probe_keeps_the_training_trajectory_bit_identical(paired_runs):
    plain, probed = paired_runs
    a = torch.load(plain / "last.pt", weights_only=True)
    b = torch.load(probed / "last.pt", weights_only=True)
    assert_same(a["model"], b["model"], "model")
    assert_same(a["optimizer"]["state"], b["optimizer"]["state"], "optimizer")
    assert_same(a["rng"], b["rng"], "rng")
    assert [e["train_loss"] for e in a["progress"]["history"]] == [e["train_loss"] for e in b["progress"]["history"]]


# --- reports --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_rules(tmp_path_factory, tiny_cifar):
    """bp, fa and fa-usf-sn on a tiny CIFAR sample, one epoch each, probes of PROBE images."""
    tmp_path = tmp_path_factory.mktemp("align")
    hook_module.PROBE_IMAGES, saved = PROBE, hook_module.PROBE_IMAGES
    try:
        for rule in ("bp", "fa", "fa-usf-sn"):
            run(tiny_config(tmp_path, tiny_cifar, rule=rule, epochs=1, deterministic=False))
    finally:
        hook_module.PROBE_IMAGES = saved
    return tmp_path / "results"


def test_plot_alignment_writes_a_png(three_rules, capsys, tmp_path):
    out = tmp_path / "fig" / "alignment.png"
    code, _, err = cli(capsys, "plot", "alignment", "--results-dir", str(three_rules), "--out", str(out))
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, printed, err = cli(capsys, "plot", "alignment", "--results-dir", str(three_rules), "--epochs", "0,7",
                             "--out", str(out))
    assert_one_line_error(code, printed, err, "no probe at the end of that epoch; probed epochs: 0, 1")


def test_plot_alignment_title_says_jpeg_sample(three_rules):
    from fabench.report.alignment import _title, load_probes
    from fabench.train.runs_csv import read_runs

    probes, _ = load_probes(read_runs(three_rules).frame(), three_rules)
    assert "JPEG-re-encoded CIFAR-10 sample" in _title(probes, "cifar10-mini", "arch1")


def test_table_alignment_gives_mean_angle_per_rule(three_rules, capsys):
    code, out, err = cli(capsys, "table", "--metric", "alignment", "--results-dir", str(three_rules), "--format", "csv")
    assert code == 0, err
    records = {r["rule"]: r for r in csv.DictReader(out.splitlines())}
    assert set(records) == {"bp", "fa", "fa-usf-sn"}
    assert float(records["bp"]["mean"]) == pytest.approx(0.0, abs=1e-6)
    assert 80.0 < float(records["fa"]["mean"]) < 100.0  # one epoch of 4 steps: still near orthogonal
    assert float(records["fa-usf-sn"]["mean"]) < float(records["fa"]["mean"]) - 10.0


def test_bench_probe_prints_the_ratio(capsys, tiny_cifar):
    code, out, err = cli(capsys, "bench", "probe", "--dataset", tiny_cifar, "--batch-size", "64", "--rounds", "1",
                         "--probes", "1", "--device", "cpu")
    assert code == 0, err
    assert "probe / epoch:" in out


def test_probe_rows_survive_a_torn_last_line(tmp_path):
    from fabench.report.alignment import read_probe_rows

    (tmp_path / "curves.csv").write_text(
        "run_id,epoch,step,split,metric,layer,value,wall_time\n"
        "r,0,0,probe,dx_angle,fc,89.5,1.0\n"
        "r,0,0,probe,dx_angle,conv,nan,1.0\n"
        "r,1,4,test,top1,,50.0,2.0\n"
        "r,1,4,probe,dx_ang"
    )
    rows = read_probe_rows(tmp_path)
    assert list(rows["layer"]) == ["fc", "conv"]
    assert rows["value"].iloc[0] == 89.5 and math.isnan(rows["value"].iloc[1])
