"""benchmarks/gpu_check.sh on a machine without a GPU: every step that can run here runs, each one
is recorded in OUT/summary.md (step, seconds, status, key numbers), and nothing fails.

SLOW-ish (about 2-3 minutes on 2 cores): the script runs end to end, in its --quick CPU mode.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["info", "build", "compile", "smoke", "plan", "bench", "tests"]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU run takes 7 minutes: run gpu_check.sh itself")
def test_gpu_check_on_cpu_writes_a_complete_summary(tmp_path):
    pytest.importorskip("triton", reason="the triton extra is not installed")
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path), "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = (tmp_path / "summary.md").read_text()
    assert result.returncode == 0, result.stdout + result.stderr + summary
    rows = {}
    for line in summary.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in STEPS:
            rows[cells[0]] = cells
    assert list(rows) == STEPS, summary
    for step, (_, seconds, status, key) in rows.items():
        assert status in ("ok", "skipped"), summary
        assert int(seconds) >= 0 and key, (step, summary)
    assert "smoke: 0 failed" in rows["smoke"][3], summary
    assert "pick:" in rows["plan"][3], summary
    assert "compile-check: ok" in rows["compile"][3], summary
    assert (tmp_path / "steps.log").stat().st_size > 0
