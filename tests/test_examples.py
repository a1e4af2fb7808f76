"""The example training study runs end to end (its --quick smoke mode) and reports sane numbers."""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_phantom.py"

for module in ("monai", "matplotlib", "tqdm"):
    pytest.importorskip(module, reason=f"{module} is in the test extra; examples/train_phantom.py needs it")


@pytest.mark.slow
def test_train_phantom_quick(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    results = json.loads((tmp_path / "results.json").read_text())
    arms = {"dicece", "scc_amplitude", "scc_complex", "scc_amplitude_4bands"}
    assert set(results["runs"]) == arms and set(results["summary"]) == arms
    assert set(results["paired_vs_dicece"]) == arms - {"dicece"}
    for arm, runs in results["runs"].items():
        assert len(runs) == 1, arm
        for domain in ("in_domain", "shifted"):
            dice = runs[0]["dice"][domain]
            assert set(dice) == {"1", "2", "3", "mean"}, (arm, domain)
            assert all(math.isfinite(v) and 0 <= v <= 1 for v in dice.values()), (arm, domain, dice)
    for name in ("dice.png", "training_curves.png", "examples.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_paired_t_p_value():
    """The study's hand-written t-test (no scipy) against two-sided 5% critical values."""
    spec = importlib.util.spec_from_file_location("train_phantom", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for t, df in [(12.7062, 1), (4.3027, 2), (2.7764, 4), (2.5706, 5), (2.2281, 10)]:
        assert module.t_two_sided_p(t, df) == pytest.approx(0.05, abs=1e-4), df
    assert module.t_two_sided_p(0.0, 5) == 1.0
