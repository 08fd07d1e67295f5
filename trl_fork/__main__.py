"""`python -m trl_fork {fork,export,check,tree,apply}`: the maintainer commands behind the Makefile."""

import argparse
import sys
from pathlib import Path

from trl_fork import patchset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trl_fork", description=__doc__)
    parser.add_argument("--root", type=Path, default=patchset.ROOT, help="the project root (upstream.cfg, patches/)")
    parser.add_argument("--sdist", help="a local copy of the pinned sdist (default: $TRL_FORK_SDIST, cache, pip)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fork", help="materialize the fork as a git repository").add_argument("dir", type=Path)
    commands.add_parser("export", help="write the fork's commits to patches/").add_argument("dir", type=Path)
    commands.add_parser("check", help="lint the series, apply it with no fuzz, check the round trip")
    commands.add_parser("tree", help="write the patched source tree (what the wheel is built from)").add_argument(
        "dir", type=Path
    )
    apply = commands.add_parser("apply", help="apply some patches of the series to a folder holding `trl/`")
    apply.add_argument("dir", type=Path)
    apply.add_argument("patches", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "fork":
            patchset.make_fork(args.root, args.dir, args.sdist)
            print(f"fork made in {args.dir}: `git -C {args.dir} log --oneline` shows its commits")
        elif args.command == "export":
            names = patchset.export(args.root, args.dir)
            print(f"exported {len(names)} patches to {args.root / 'patches'}")
        elif args.command == "check":
            patchset.check(args.root, args.sdist)
        elif args.command == "tree":
            pin = patchset.prepare_tree(args.root, args.dir, args.sdist)
            print(f"patched {pin.name} {pin.fork_version} in {args.dir}")
        elif args.command == "apply":
            for patch in args.patches:
                patchset.apply_patch(args.dir, patch)
            print(f"applied {len(args.patches)} patches to {args.dir}")
    except patchset.PatchSetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
