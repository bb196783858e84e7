"""Imports every command module so that each registers its commands on the app."""
# ruff: noqa: F401, I001

from fabench.cli import ls
from fabench.cli import bench, bench_rules
from fabench.cli import ls_data
from fabench.cli import tasks_cmd, report_cmd
from fabench.cli import run_cmd, bench_loop
from fabench.cli import bench_probe
from fabench.cli import bench_feedback
from fabench.cli import bench_prior_art
from fabench.cli import bench_pipeline
from fabench.cli import tune_cmd
from fabench.cli import bench_peak
from fabench.cli import index_cmd
