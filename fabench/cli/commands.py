"""Imports every command module so that each registers its commands on the app."""

from fabench.cli import ls  # noqa: F401
from fabench.cli import bench, bench_rules  # noqa: F401
from fabench.cli import report_cmd, tasks_cmd  # noqa: F401
from fabench.cli import ls_data  # noqa: F401
