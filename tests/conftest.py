"""Shared test settings: one thread per process keeps the suite steady on a 2-core machine."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
