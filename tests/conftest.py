"""Session-wide isolation: tests never read or write the user's caches."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PNEUMONIA_NPZ = SHARED / "chest_xray_pneumonia" / "pneumoniamnist_28_reconstructed.npz"


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("caches")
    mp.setenv("LIGHTLAYERS_CACHE", str(root / "lightlayers"))
    # An empty torch hub: pretrained weights are never found, so no test downloads anything.
    mp.setenv("TORCH_HOME", str(root / "torch"))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared test data not found at {SHARED} (expected ../shared/data)")
    return SHARED


@pytest.fixture(scope="session")
def hostile_run(tmp_path_factory) -> Path:
    """A finished digits study (tests/hostile.py): the template the hostile cases copy."""
    from hostile import finished_run

    return finished_run(tmp_path_factory)
