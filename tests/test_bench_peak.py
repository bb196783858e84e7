"""``fabench bench peak``: achieved GFLOP/s as a fraction of the matmul peak, in one process."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.test_cli_errors import _entry_point


def test_bench_peak_reports_fraction_of_peak_for_both_settings():
    done = subprocess.run([*_entry_point(), "bench", "peak", "--arch", "arch1", "--image-size", "24",
                           "--batch-size", "8", "--steps", "1", "--rounds", "1"],
                          capture_output=True, text=True, check=True)
    out = done.stdout
    peaks = re.search(r"float32 (\d+) GFLOP/s, bfloat16 (\d+) GFLOP/s", out)
    assert peaks and all(int(v) > 0 for v in peaks.groups()), out
    assert re.search(r"(\d+\.\d+) GFLOP per step", out), out
    rows = re.findall(r"│ (fp32, NCHW|bf16, channels_last) +│ (plain PyTorch|fabench fa) +│ +([\d.]+) │ +(\d+) │ "
                      r"+([\d.]+) │ +([\d.]+) │", out)
    assert {(setting, step) for setting, step, *_ in rows} == {
        ("fp32, NCHW", "plain PyTorch"), ("fp32, NCHW", "fabench fa"),
        ("bf16, channels_last", "plain PyTorch"), ("bf16, channels_last", "fabench fa")}, out
    assert all(float(ms) > 0 and float(share) > 0 for _, _, ms, _, _, share in rows), out
    assert re.search(r"fabench fa: bf16, channels_last is [\d.]+x the speed of fp32, NCHW", out), out


def test_bench_peak_times_a_plugin_rule():
    plugin = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "dkp.py"
    done = subprocess.run([*_entry_point(), "bench", "peak", "--arch", "arch1", "--image-size", "24",
                           "--batch-size", "8", "--steps", "1", "--rounds", "1", "--plugin", str(plugin),
                           "--rule", "dkp"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert re.search(r"fabench dkp: bf16, channels_last is [\d.]+x the speed", done.stdout), done.stdout
