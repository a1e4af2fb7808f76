"""The README's examples run as written, and CI runs the README's quick start."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(index):
    code = PYTHON_BLOCKS[index]
    if "monai" in code:
        pytest.importorskip("monai", reason="MONAI is in the test extra; the GPU image lacks it")
    exec(compile(code, f"README.md python block {index}", "exec"), {})


def test_ci_runs_the_quick_start():
    quick_start = re.search(r"## Quick start\n\n```bash\n(.*?)```", README, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in quick_start.strip().splitlines()]
    assert len(commands) == 2 and commands[0].endswith("python -m scc_kernels")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci, f"{command!r} is not a line of .ci/run"
