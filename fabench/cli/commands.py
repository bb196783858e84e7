"""Imports every command module so that each registers its commands on the app."""

from fabench.cli import ls  # noqa: F401
