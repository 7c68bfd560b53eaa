"""``python -m rbp.theory COMMAND ...``: the theory commands without the main CLI."""

import argparse
import sys

from ..errors import RBPError
from .cli import register


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rbp.theory")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["theory", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except RBPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
