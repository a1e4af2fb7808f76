"""The fast tier: `python -m pytest -m "not slow"` deselects the tests marked slow (toolchain
compiles, torch.compile, DDP spawns, examples, large gradchecks, long sweeps); the marker is
registered and --strict-markers makes a misspelt one an error instead of a test left in the tier."""


def test_slow_marker_is_registered_and_markers_are_strict(pytestconfig):
    assert any(line.startswith("slow:") for line in pytestconfig.getini("markers"))
    assert "--strict-markers" in pytestconfig.getini("addopts")
