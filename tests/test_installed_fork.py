"""The installed `trl` is the fork: its version carries the fork's label and its files carry every patch of the
series (compared with a patched tree made here from the pinned sdist)."""

from pathlib import Path

import pytest

import trl
from trl_fork import patchset


ROOT = Path(__file__).resolve().parent.parent
PIN = patchset.read_pin(ROOT)


def test_version_carries_the_fork_label():
    assert trl.__version__ == PIN.fork_version
    assert trl.__version__.startswith(f"{PIN.version}+")


@pytest.fixture(scope="module")
def patched_tree(tmp_path_factory):
    tree = tmp_path_factory.mktemp("patched")
    patchset.prepare_tree(ROOT, tree)
    return tree


@pytest.mark.parametrize(
    "patch", patchset.read_series(ROOT / "patches") or [pytest.param(None, marks=pytest.mark.skip)]
)
def test_installed_files_carry_the_patch(patch, patched_tree):
    installed = Path(trl.__file__).resolve().parent.parent
    touched = patchset.touched_paths((ROOT / "patches" / patch).read_text())
    assert touched, f"{patch} touches no file"
    for old, new in touched:
        if new is None:
            assert not (installed / old).exists(), f"{old} should be deleted by {patch}"
        elif new.startswith("trl/"):
            assert (installed / new).read_bytes() == (patched_tree / new).read_bytes(), f"{new} differs from {patch}"
