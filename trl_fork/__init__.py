"""Tooling for the trl fork: the patch set (`patchset`), its command line (`python -m trl_fork`) and the PEP 517
build backend (`backend`) that builds a patched `trl` from the pinned upstream sdist."""
