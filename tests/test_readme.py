"""The README's and CONTRIBUTING's examples run as written, their links resolve, and CI runs the
README's quick start."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCUMENTS = ["README.md", "CONTRIBUTING.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
PYTHON_BLOCKS = [
    (name, index, code)
    for name in DOCUMENTS
    for index, code in enumerate(re.findall(r"```python\n(.*?)```", (ROOT / name).read_text(), flags=re.S))
]


@pytest.mark.parametrize(("name", "index", "code"), PYTHON_BLOCKS, ids=[f"{n}-{i}" for n, i, _ in PYTHON_BLOCKS])
def test_python_example_runs(name, index, code):
    if "monai" in code:
        pytest.importorskip("monai", reason="MONAI is in the test extra; the GPU image lacks it")
    exec(compile(code, f"{name} python block {index}", "exec"), {})


def test_ci_runs_the_quick_start():
    quick_start = re.search(r"## Quick start\n\n```bash\n(.*?)```", README, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in quick_start.strip().splitlines()]
    assert len(commands) == 2 and commands[0].endswith("python -m scc_kernels")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci, f"{command!r} is not a line of .ci/run"


def test_readme_links_to_contributing():
    assert "(CONTRIBUTING.md)" in README.split("## ")[0], "the README's introduction links CONTRIBUTING.md"


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a document's headings: lower case, punctuation but - and _ dropped,
    spaces to hyphens (code blocks' '#' lines are not headings)."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


LINKS = [
    (name, target)
    for name in DOCUMENTS
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", (ROOT / name).read_text(), flags=re.S))
    if not re.match(r"[a-z]+:", target)
]


@pytest.mark.parametrize(("name", "target"), LINKS, ids=[f"{n}->{t}" for n, t in LINKS])
def test_relative_link_resolves(name, target):
    """Every relative link of the README, CONTRIBUTING and docs/ names a file of the repository,
    and a #anchor one of its headings."""
    path, _, anchor = target.partition("#")
    linked = (ROOT / name).parent / path if path else ROOT / name
    assert linked.exists(), f"{name} links {target}: no such file"
    if anchor:
        assert anchor in _anchors(linked.read_text()), f"{name} links {target}: no such heading"
