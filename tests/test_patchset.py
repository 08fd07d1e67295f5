"""The patch-set tooling: pin, series lint, apply, fork/export round trip, the build backend and its wheel.

These tests make their own throwaway patches against the pinned sdist, so they do not depend on the feature patches.
"""

import configparser
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import Version

from trl_fork import backend, patchset


ROOT = Path(__file__).resolve().parent.parent
PIN = patchset.read_pin(ROOT)


@pytest.fixture(scope="session")
def sdist():
    return patchset.find_sdist(PIN)


def new_project(path: Path, patches: dict[str, str] | None = None) -> Path:
    """A throwaway project root: our pin, and the given patches (name -> text) as its series."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "upstream.cfg", path / "upstream.cfg")
    (path / "patches").mkdir(exist_ok=True)
    for name, text in (patches or {}).items():
        (path / "patches" / name).write_text(text)
    (path / "patches" / "series").write_text("".join(f"{name}\n" for name in patches or {}))
    return path


def commit(fork: Path, subject: str, body: str = "Why it exists.", trailer: str = "Upstream-Status: Pending"):
    patchset.git("add", "--all", cwd=fork)
    message = f"{subject}\n\n{body}\n\n{trailer}\n" if trailer else f"{subject}\n\n{body}\n"
    patchset.git("commit", "--quiet", "-m", message, cwd=fork)


@pytest.fixture
def project_with_patches(tmp_path, sdist):
    """A project whose series holds three throwaway patches: modify, add and delete upstream files."""
    root = new_project(tmp_path / "project")
    fork = tmp_path / "fork"
    patchset.make_fork(root, fork, sdist)
    init = fork / "trl" / "experimental" / "ppo" / "__init__.py"
    init.write_text(init.read_text() + "THROWAWAY = 1\n")
    commit(fork, "Mark the PPO package")
    (fork / "trl" / "experimental" / "throwaway.py").write_text('"""A new module."""\n')
    commit(fork, "Add a throwaway module")
    (fork / "trl" / "accelerate_configs" / "zero1.yaml").unlink()
    commit(fork, "Drop the zero1 config", trailer="Upstream-Status: Inappropriate [test only]")
    patchset.export(root, fork)
    return root


def test_pin_is_the_registry_sdist(sdist):
    # The pinned digest was checked against PyPI's published digest when pinned; the file we fetch must match it.
    assert hashlib.sha256(sdist.read_bytes()).hexdigest() == PIN.sha256
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert f"{PIN.name}-{PIN.version}/trl/experimental/ppo/ppo_trainer.py" in names
    assert not any(name.startswith(f"{PIN.name}-{PIN.version}/tests/") for name in names)


def test_tfmin_constraints_are_the_sdists_declared_floors(sdist):
    with tarfile.open(sdist) as tar:
        pkg_info = tar.extractfile(f"{PIN.name}-{PIN.version}/PKG-INFO").read().decode()
    floors = {}
    for requirement in Parser().parsestr(pkg_info).get_all("Requires-Dist"):
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement.strip())
        if match:
            floors[match.group(1).lower()] = match.group(2)
    pins = dict(
        line.split("==")
        for line in (ROOT / "requirements" / "constraints-tfmin.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins == {name: floors[name] for name in ("transformers", "accelerate", "datasets")}


def test_fork_version_sorts_numerically():
    pin = PIN
    assert str(Version(pin.fork_version)) == pin.fork_version
    assert Version(f"{pin.version}+{pin.label}.10") > Version(f"{pin.version}+{pin.label}.9")
    assert Version(pin.fork_version).public == pin.version


def test_round_trip_is_byte_identical(project_with_patches, tmp_path, sdist, capsys):
    root = project_with_patches
    assert (root / "patches" / "series").read_text().splitlines() == [
        "Mark-the-PPO-package.patch",
        "Add-a-throwaway-module.patch",
        "Drop-the-zero1-config.patch",
    ]
    for path in (root / "patches").glob("*.patch"):
        text = path.read_text()
        assert text.startswith("From 0000000000000000000000000000000000000000 ")  # --zero-commit
        assert "[PATCH" not in text and "\n-- \n" not in text  # --keep-subject, --no-signature
        assert re.search(r"^index [0-9a-f]{40}\.\.[0-9a-f]{40}", text, re.MULTILINE)  # --full-index
    patchset.check(root, sdist)
    assert "round trip exact" in capsys.readouterr().out


@settings(max_examples=3)
@given(
    subject=st.from_regex(r"[A-Z][a-z]{2,8}( [a-z]{1,8}){1,5}", fullmatch=True),
    lines=st.lists(st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=30), max_size=5),
)
def test_round_trip_for_any_content(tmp_path_factory, sdist, subject, lines):
    tmp = tmp_path_factory.mktemp("rt")
    root = new_project(tmp / "project")
    fork = tmp / "fork"
    patchset.make_fork(root, fork, sdist)
    (fork / "trl" / "new_file.txt").write_text("".join(line + "\n" for line in lines) + "end\n")
    commit(fork, subject)
    first = patchset.export(root, fork)
    before = {p.name: p.read_bytes() for p in (root / "patches").iterdir()}
    patchset.make_fork(root, tmp / "fork2", sdist)
    assert patchset.export(root, tmp / "fork2") == first
    assert {p.name: p.read_bytes() for p in (root / "patches").iterdir()} == before


def test_drift_is_detected_and_shown(project_with_patches, sdist):
    # A patch written by other means (abbreviated index, git's signature) still applies, but is not what export gives.
    patch = project_with_patches / "patches" / "Mark-the-PPO-package.patch"
    text = patch.read_text()
    short = re.sub(
        r"^index ([0-9a-f]{8})[0-9a-f]{32}\.\.([0-9a-f]{8})[0-9a-f]{32}", r"index \1..\2", text, flags=re.MULTILINE
    )
    patch.write_text(short + "-- \n2.39.5\n\n")
    with pytest.raises(patchset.PatchSetError, match="drifted") as error:
        patchset.check(project_with_patches, sdist)
    assert re.search(r"^-index [0-9a-f]{8}\.\.[0-9a-f]{8} ", str(error.value), re.MULTILINE)
    assert re.search(r"^\+index [0-9a-f]{40}\.\.", str(error.value), re.MULTILINE)


def test_export_drops_patches_of_dropped_commits(project_with_patches, tmp_path, sdist):
    fork = tmp_path / "fork-again"
    patchset.make_fork(project_with_patches, fork, sdist)
    patchset.git("reset", "--quiet", "--hard", "HEAD~1", cwd=fork)
    patchset.export(project_with_patches, fork)
    assert sorted(p.name for p in (project_with_patches / "patches").glob("*.patch")) == [
        "Add-a-throwaway-module.patch",
        "Mark-the-PPO-package.patch",
    ]


def test_hash_mismatch_names_file_and_both_hashes(tmp_path):
    fake = tmp_path / PIN.sdist_name
    fake.write_bytes(b"not the sdist")
    found = hashlib.sha256(b"not the sdist").hexdigest()
    with pytest.raises(patchset.PatchSetError) as error:
        patchset.find_sdist(PIN, fake)
    message = str(error.value)
    assert str(fake) in message and found in message and PIN.sha256 in message and "TRL_FORK_SDIST" in message


def test_failing_hunk_names_patch_file_and_hunk(tmp_path, sdist):
    good = new_project(tmp_path / "good")
    fork = tmp_path / "fork"
    patchset.make_fork(good, fork, sdist)
    config = fork / "trl" / "experimental" / "ppo" / "ppo_config.py"
    config.write_text(config.read_text().replace("class PPOConfig(", "class PPOConfig(  # patched\n    "))
    commit(fork, "Touch the PPO config")
    patchset.export(good, fork)
    text = (good / "patches" / "Touch-the-PPO-config.patch").read_text()
    hunk = re.search(r"^@@ .* @@.*$", text, re.MULTILINE).group(0)
    context = next(line for line in text.split(hunk, 1)[1].splitlines() if line.startswith(" ") and line.strip())
    broken = text.replace(f"\n{context}\n", f"\n{context} # upstream moved on\n", 1)
    root = new_project(tmp_path / "broken", {"Touch-the-PPO-config.patch": broken})
    with pytest.raises(patchset.PatchSetError) as error:
        patchset.prepare_tree(root, tmp_path / "tree", sdist)
    message = str(error.value)
    assert "Touch-the-PPO-config.patch" in message and "trl/experimental/ppo/ppo_config.py" in message
    assert hunk in message


def test_nested_git_trap_is_avoided(project_with_patches, tmp_path, sdist):
    # An outer repository around the tree, as `pip install git+...` has.
    outer = tmp_path / "outer"
    outer.mkdir()
    patchset.git("init", "--quiet", cwd=outer)
    patch = project_with_patches / "patches" / "Mark-the-PPO-package.patch"
    naive = patchset.extract_sdist(sdist, PIN, outer / "naive")
    plain = subprocess.run(["git", "apply", str(patch)], cwd=naive, capture_output=True, check=False)
    assert plain.returncode == 0
    assert "THROWAWAY" not in (naive / "trl/experimental/ppo/__init__.py").read_text()  # the trap: nothing applied
    tree = patchset.extract_sdist(sdist, PIN, outer / "tree")
    patchset.apply_patch(tree, patch)
    assert "THROWAWAY = 1" in (tree / "trl/experimental/ppo/__init__.py").read_text()


def test_apply_that_changes_nothing_is_an_error(project_with_patches, tmp_path, sdist, monkeypatch):
    tree = patchset.extract_sdist(sdist, PIN, tmp_path / "tree")
    monkeypatch.setattr(patchset, "git", lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, "", ""))
    with pytest.raises(patchset.PatchSetError, match="did not change"):
        patchset.apply_patch(tree, project_with_patches / "patches" / "Mark-the-PPO-package.patch")


@pytest.mark.parametrize("problem", ["missing", "unlisted", "duplicate", "trailer"])
def test_series_lint_names_the_problem(project_with_patches, problem):
    patches = project_with_patches / "patches"
    series = (patches / "series").read_text()
    if problem == "missing":
        (patches / "series").write_text(series + "Not-there.patch\n")
        expected = "Not-there.patch"
    elif problem == "unlisted":
        (patches / "series").write_text(series.replace("Add-a-throwaway-module.patch\n", ""))
        expected = "Add-a-throwaway-module.patch is in"
    elif problem == "duplicate":
        (patches / "series").write_text(series + "Mark-the-PPO-package.patch\n")
        expected = "Mark-the-PPO-package.patch more than once"
    else:
        patch = patches / "Drop-the-zero1-config.patch"
        patch.write_text(patch.read_text().replace("Upstream-Status: Inappropriate [test only]", "No trailer"))
        expected = "Drop-the-zero1-config.patch: its message must end with an `Upstream-Status:`"
    with pytest.raises(patchset.PatchSetError) as error:
        patchset.lint_series(patches)
    assert expected in str(error.value)


def test_export_never_loses_patches(project_with_patches, tmp_path, sdist):
    patches = project_with_patches / "patches"
    before = {p.name: p.read_bytes() for p in patches.iterdir()}
    with pytest.raises(patchset.PatchSetError, match="no fork"):
        patchset.export(project_with_patches, tmp_path / "missing")
    fork = tmp_path / "dirty"
    patchset.make_fork(project_with_patches, fork, sdist)
    (fork / "trl" / "__init__.py").write_text("# uncommitted edit\n")
    with pytest.raises(patchset.PatchSetError, match="uncommitted changes"):
        patchset.export(project_with_patches, fork)
    patchset.git("checkout", "--", ".", cwd=fork)
    (fork / "trl" / "x.py").write_text("x = 1\n")
    commit(fork, "Commit without a trailer", trailer="")
    with pytest.raises(patchset.PatchSetError, match="no `Upstream-Status:` trailer"):
        patchset.export(project_with_patches, fork)
    assert {p.name: p.read_bytes() for p in patches.iterdir()} == before


def test_make_fork_refuses_to_overwrite(project_with_patches, tmp_path, sdist):
    fork = tmp_path / "existing"
    (fork / "work").mkdir(parents=True)
    (fork / "work" / "keep.txt").write_text("mine")
    with pytest.raises(patchset.PatchSetError, match="already exists"):
        patchset.make_fork(project_with_patches, fork, sdist)
    assert (fork / "work" / "keep.txt").read_text() == "mine"


def test_fork_has_upstream_commit_tag_and_fixed_committer(project_with_patches, tmp_path, sdist):
    fork = tmp_path / "fork-again"
    patchset.make_fork(project_with_patches, fork, sdist)
    log = patchset.git("log", "--reverse", "--format=%s|%cn|%cI", cwd=fork).stdout.splitlines()
    assert log[0].startswith(f"upstream trl {PIN.version}|")
    assert [line.split("|")[0] for line in log[1:]] == [
        "Mark the PPO package",
        "Add a throwaway module",
        "Drop the zero1 config",
    ]
    assert {line.split("|", 1)[1] for line in log} == {"trl-fork maintainers|2000-01-01T00:00:00+00:00"}
    assert patchset.git("rev-list", "-1", PIN.tag, cwd=fork).stdout.strip()


def test_no_git_is_reported_before_anything(project_with_patches, tmp_path, monkeypatch, sdist):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(patchset.PatchSetError, match="git was not found on PATH"):
        patchset.make_fork(project_with_patches, tmp_path / "no-git-fork", sdist)
    assert not (tmp_path / "no-git-fork").exists()


def build(root: Path, out: Path, sdist: Path, monkeypatch) -> Path:
    monkeypatch.chdir(root)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out.mkdir(parents=True, exist_ok=True)
    return out / backend.build_wheel(str(out), {"sdist": str(sdist)})


def test_wheel_is_patched_versioned_upstream_shaped_and_reproducible(
    project_with_patches, tmp_path, sdist, monkeypatch
):
    first = build(project_with_patches, tmp_path / "a", sdist, monkeypatch)
    second = build(project_with_patches, tmp_path / "b", sdist, monkeypatch)
    assert first.name == f"trl-{PIN.fork_version}-py3-none-any.whl"
    assert hashlib.sha256(first.read_bytes()).hexdigest() == hashlib.sha256(second.read_bytes()).hexdigest()
    with zipfile.ZipFile(first) as wheel:
        names = set(wheel.namelist())
        assert "THROWAWAY = 1" in wheel.read("trl/experimental/ppo/__init__.py").decode()
        assert "trl/experimental/throwaway.py" in names
        assert "trl/accelerate_configs/zero1.yaml" not in names
        assert "trl/accelerate_configs/zero2.yaml" in names  # upstream's package data is kept
        info = f"trl-{PIN.fork_version}.dist-info"
        metadata = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    with tarfile.open(sdist) as tar:
        upstream = Parser().parsestr(tar.extractfile(f"{PIN.name}-{PIN.version}/PKG-INFO").read().decode())
    assert metadata["Version"] == PIN.fork_version
    assert sorted(metadata.get_all("Requires-Dist")) == sorted(upstream.get_all("Requires-Dist"))
    assert "trl = trl.cli:main" in entry_points


def test_our_sdist_holds_only_our_files(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    name = backend.build_sdist(str(tmp_path))
    assert name == f"trl-{PIN.fork_version}.tar.gz"
    with tarfile.open(tmp_path / name) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames()]
    assert "pyproject.toml" in names and "upstream.cfg" in names and "patches/series" in names
    assert "trl_fork/backend.py" in names and "PKG-INFO" in names
    assert not any(n.startswith(("trl/", "tests/", "build/")) for n in names)
    again = tmp_path / "again"
    again.mkdir()
    backend.build_sdist(str(again))
    assert (again / name).read_bytes() == (tmp_path / name).read_bytes()


def test_pin_file_errors_are_clear(tmp_path):
    root = new_project(tmp_path / "p")
    parser = configparser.ConfigParser()
    parser.read(root / "upstream.cfg")
    parser["upstream"]["sha256"] = "abc"
    with open(root / "upstream.cfg", "w") as f:
        parser.write(f)
    with pytest.raises(patchset.PatchSetError, match="64 hex digits, found 'abc'"):
        patchset.read_pin(root)


def test_pip_install_git_url_gives_the_patched_trl(project_with_patches, tmp_path, sdist, monkeypatch):
    # What users run: `pip install git+...` clones the repository and calls our backend from inside the clone.
    repo = project_with_patches
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "trl_fork", repo / "trl_fork", ignore=shutil.ignore_patterns("__pycache__"))
    patchset.git("init", "--quiet", cwd=repo)
    commit(repo, "Project")
    monkeypatch.setenv("TRL_FORK_SDIST", str(sdist))
    target = tmp_path / "site"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
    subprocess.run([*command, f"git+file://{repo}"], check=True)
    info = target / f"trl-{PIN.fork_version}.dist-info"
    assert info.is_dir(), sorted(p.name for p in target.iterdir())
    assert "THROWAWAY = 1" in (target / "trl/experimental/ppo/__init__.py").read_text()
    assert (target / "trl/experimental/throwaway.py").is_file()
    assert not (target / "trl/accelerate_configs/zero1.yaml").exists()
