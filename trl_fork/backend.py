"""PEP 517 build backend: build a patched `trl` wheel from the pinned upstream sdist and `patches/series`.

`pip install .`, `pip install git+file://...` and `pip install git+https://...` call this backend. It fetches the
pinned sdist (with `pip download`, so the user's index configuration, mirrors and offline settings apply; cached and
always hash-checked; or a local file from `$TRL_FORK_SDIST` or `--config-settings sdist=PATH`), applies the series in
a temporary directory, sets the version to `<upstream>+<label>.<release>` and hands the build to upstream's own
setuptools configuration, so package data, entry points and dependencies stay exactly upstream's.

Our own sdist holds only our files (the pin, the patches, this backend); building a wheel from it makes the same
patched `trl`.
"""

import gzip
import io
import os
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

from trl_fork import patchset


# Everything our sdist carries: the pin, the series, the backend and the files that describe them.
SDIST_FILES = ["pyproject.toml", "upstream.cfg", "README.md", "patches", "trl_fork"]


@contextmanager
def _patched_tree(config_settings):
    sdist = (config_settings or {}).get("sdist")
    with tempfile.TemporaryDirectory(prefix="trl-fork-") as tmp:
        tree = Path(tmp) / "src"
        patchset.prepare_tree(Path.cwd(), tree, sdist)
        cwd = os.getcwd()
        os.chdir(tree)
        try:
            yield tree
        finally:
            os.chdir(cwd)


def get_requires_for_build_wheel(config_settings=None):
    return []  # setuptools (upstream's build requirement) and pip are in pyproject.toml's `requires`


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    from setuptools import build_meta

    wheel_directory = os.path.abspath(wheel_directory)
    with _patched_tree(config_settings):
        return build_meta.build_wheel(wheel_directory)


def get_requires_for_build_sdist(config_settings=None):
    return []


def build_sdist(sdist_directory, config_settings=None):
    """An sdist of our own files only, named and versioned as the fork (e.g. `trl-1.12.0+fork.2.tar.gz`)."""
    root = Path.cwd()
    pin = patchset.read_pin(root)
    base = f"{pin.name}-{pin.fork_version}"
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    pkg_info = f"Metadata-Version: 2.1\nName: {pin.name}\nVersion: {pin.fork_version}\n".encode()
    files = sorted(
        path
        for name in SDIST_FILES
        for path in ([root / name] if (root / name).is_file() else (root / name).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for arcname, data in [("PKG-INFO", pkg_info)] + [(str(p.relative_to(root)), p.read_bytes()) for p in files]:
            info = tarfile.TarInfo(f"{base}/{arcname}")
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            tar.addfile(info, io.BytesIO(data))
    name = f"{base}.tar.gz"
    with (
        open(os.path.join(sdist_directory, name), "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=mtime) as gz,
    ):
        gz.write(buffer.getvalue())
    return name
