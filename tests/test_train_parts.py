"""Pieces of fabench.train on their own: schedules, optimizer defaults, runs.csv, curves."""

from __future__ import annotations

import csv
import math
import multiprocessing
from pathlib import Path

import pytest
import torch

from fabench.errors import FabenchError
from fabench.train.config import RunConfig
from fabench.train.curves import CurveWriter
from fabench.train.optim import LrFactor, build_optimizer, build_scheduler
from fabench.train.runs_csv import check_results_dir, upsert_run_row
from fabench.train.schema import COLUMNS, make_row


def factor(schedule: str, **kw) -> LrFactor:
    settings = dict(schedule=schedule, steps_per_epoch=10, total_steps=100, warmup_steps=0, gamma=0.1,
                    step_size=3, milestones=(2, 5))
    return LrFactor(**{**settings, **kw})


def test_warmup_then_cosine_reaches_zero_at_the_last_step():
    f = factor("cosine", warmup_steps=20)
    assert f(0) == pytest.approx(1 / 20) and f(19) == pytest.approx(1.0) and f(20) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(20, 100))


def test_step_and_multistep_change_the_rate_at_epoch_boundaries():
    step = factor("step")
    assert [step(s) for s in (29, 30, 60)] == pytest.approx([1.0, 0.1, 0.01])
    multi = factor("multistep")
    assert [multi(s) for s in (19, 20, 49, 50)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    assert factor("none")(99) == 1.0


def test_scheduler_steps_the_optimizer_rate():
    model = torch.nn.Linear(4, 2)
    config = RunConfig(epochs=2, lr=0.5, schedule="step", step_size=1, gamma=0.5)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=3)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.5] * 3 + [0.25] * 3)


def test_weight_decay_spares_biases():
    optimizer = build_optimizer(torch.nn.Linear(4, 2), RunConfig(weight_decay=0.1))
    decays = {tuple(g["params"][0].shape): g["weight_decay"] for g in optimizer.param_groups}
    assert decays == {(2, 4): 0.1, (2,): 0.0}


def row(run_id: str, status: str = "finished") -> dict:
    return make_row({**RunConfig().to_dict(), "run_id": run_id}, {"status": status}, {})


def _writer(results: str, worker: int) -> None:
    for i in range(15):
        upsert_run_row(Path(results), row(f"w{worker}-{i}"))
        upsert_run_row(Path(results), row("shared", status=f"{'finished' if i % 2 else 'failed'}"))


def test_concurrent_writers_never_lose_tear_or_duplicate_rows(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(str(tmp_path), w)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
    assert all(p.exitcode == 0 for p in workers)
    with open(tmp_path / "runs.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        ids = [r["run_id"] for r in reader]
    assert sorted(ids) == sorted([f"w{w}-{i}" for w in range(4) for i in range(15)] + ["shared"])


def test_a_rerun_replaces_its_row_in_place(tmp_path):
    upsert_run_row(tmp_path, row("a", "interrupted"))
    upsert_run_row(tmp_path, row("b"))
    upsert_run_row(tmp_path, row("a"))
    with open(tmp_path / "runs.csv", newline="") as handle:
        assert [(r["run_id"], r["status"]) for r in csv.DictReader(handle)] == [("b", "finished"), ("a", "finished")]


def test_a_foreign_runs_csv_is_refused_not_merged(tmp_path):
    (tmp_path / "runs.csv").write_text("run_id,accuracy\nx,1\n")
    with pytest.raises(FabenchError, match="differ"):
        check_results_dir(tmp_path)
    with pytest.raises(FabenchError):
        upsert_run_row(tmp_path, row("a"))
    assert (tmp_path / "runs.csv").read_text() == "run_id,accuracy\nx,1\n"


def test_results_check_creates_nothing(tmp_path):
    check_results_dir(tmp_path / "new" / "results")
    assert list(tmp_path.iterdir()) == []


def test_curves_after_a_checkpoint_step_are_dropped_on_resume(tmp_path):
    path = tmp_path / "curves.csv"
    with CurveWriter(path, "r1") as curves:
        for step in (10, 20, 30):
            curves.log(step // 10, step, "test", "top1", step / 2)
        curves.log(3, 30, "probe", "dx_angle", math.pi, layer="features.0")
    CurveWriter(path, "r1").truncate_after(20)
    with CurveWriter(path, "r1") as curves:
        curves.log(3, 30, "test", "top1", 99.0)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["step"], r["value"]) for r in rows] == [("10", "5.0"), ("20", "10.0"), ("30", "99.0")]


def test_a_malformed_record_is_carried_over_untouched(tmp_path):
    upsert_run_row(tmp_path, row("a"))
    with open(tmp_path / "runs.csv", "a") as handle:
        handle.write("1,broken,row,with,extra,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,\n")
    upsert_run_row(tmp_path, row("b"))
    lines = (tmp_path / "runs.csv").read_text().splitlines()
    assert lines[2].startswith("1,broken,row") and lines[3].split(",")[1] == "b"
