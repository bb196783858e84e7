"""Imports every command module so that each registers its commands on the app."""

from fabench.cli import (  # noqa: F401  # noqa: F401
    bench,
    bench_rules,
    ls,
    ls_data,
    report_cmd,
    tasks_cmd,
)
