"""``python -m nonstop.image build [--force] [--cache DIR]``: build (or find) the built-in guest image.

Prints the kernel and initrd paths. Must not do anything else (setup.sh calls it on every run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nonstop.image.build import DEFAULT_CACHE, ImageBuildError, ensure_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nonstop.image")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the built-in guest image (cached)")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    try:
        paths = ensure_image(args.cache, force=args.force)
    except (ImageBuildError, OSError) as exc:
        print(f"nonstop.image: {exc}", file=sys.stderr)
        return 1
    print(f"kernel {paths.kernel}\ninitrd {paths.initrd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
