"""Tasks: grids of runs described as data (``tasks/*.yaml``), validated, expanded and run.

Public surface:

- :func:`task_dirs`, :func:`scan`, :func:`load_task`, :func:`check_file`: find and validate
  task files (errors name ``file:line``);
- :class:`Task` (``task.cells(results_dir=..., ...)``) and :class:`Cell`: the grid;
- :func:`select_cells`: fnmatch filters on the axes;
- :func:`run_grid` (in :mod:`fabench.tasks.grid`): run cells in worker processes.

The file format is documented in :mod:`fabench.tasks._spec` and docs/tasks.md.
"""

from fabench.tasks._discover import (
    FileReport,
    check_file,
    duplicate_names,
    is_fragment,
    load_task,
    scan,
    task_dirs,
    task_files,
    visible_tasks,
)
from fabench.tasks._select import select_cells
from fabench.tasks._source import Location, Problem, TaskFileError, read_task_file
from fabench.tasks._spec import Cell, Task, When

__all__ = [
    "Cell",
    "FileReport",
    "Location",
    "Problem",
    "Task",
    "TaskFileError",
    "When",
    "check_file",
    "duplicate_names",
    "is_fragment",
    "load_task",
    "read_task_file",
    "scan",
    "select_cells",
    "task_dirs",
    "task_files",
    "visible_tasks",
]
