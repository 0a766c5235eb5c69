"""``python -m runtime.shim.pause build [--out PATH] [--cc CC]``: build the pause binary.

Without ``--out`` it goes to the default of ``pods.pause_binary``; a build of the same recipe
already there is kept (runtime.shim.pause.build). Prints the path; exits 1 with the reason
when it cannot build.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from runtime.config import PodSettings
from runtime.shim.pause.build import BuildError, build


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.shim.pause",
                                     description="Build the pod PID holder (pause) binary.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile pause.c (kept when the recipe is unchanged)")
    b.add_argument("--out", type=Path, default=PodSettings().pause_binary,
                   help="where the binary goes (default: the default of pods.pause_binary, %(default)s)")
    b.add_argument("--cc", default=None, help="C compiler (default: $CC, else cc)")
    args = parser.parse_args(argv)
    out = args.out.absolute()
    try:
        built = build(out, args.cc)
    except (BuildError, OSError) as exc:
        print(f"pause: {exc}", file=sys.stderr)
        return 1
    print(f"{out} ({'built' if built else 'up to date'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
