"""Shared test settings: small thread counts keep the suite steady on a 2-core machine."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
