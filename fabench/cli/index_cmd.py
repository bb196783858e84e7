"""``fabench index [RESULTS_DIR]``: rebuild runs.csv from the records in the run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fabench.cli import app


@app.command("index")
def index(
    results_dir: Annotated[Path, typer.Argument(help="Results folder: runs.csv and one folder per task.")] = Path("results"),
) -> None:
    """Rebuild RESULTS_DIR/runs.csv from the record in each run folder (a lost or stale index); rows
    without a record (an earlier release's runs) are kept and their folders get one."""
    from fabench._paths import display_path
    from fabench.errors import FabenchError
    from fabench.train.records import disk_errors
    from fabench.train.run_index import RUNS_CSV, refresh_index, scan_records
    from fabench.train.run_record import record_earlier_runs

    if not results_dir.is_dir():
        raise FabenchError(f"results folder {results_dir} does not exist; give the folder that holds runs.csv")
    with disk_errors(results_dir):
        adopted = record_earlier_runs(results_dir)
        if not scan_records(results_dir):
            raise FabenchError(f"no run records under {results_dir} (results/<task>/<run_id>/record.csv); "
                               "nothing to index")
        refresh = refresh_index(results_dir, full=True, best_effort=False)
    for problem in refresh.problems:
        typer.echo(f"fabench: warning: {problem}", err=True)
    note = f"; {adopted} of them recorded from an earlier release's runs" if adopted else ""
    typer.echo(f"{display_path(results_dir / RUNS_CSV)}: {len(refresh.merged)} run records merged{note}")
