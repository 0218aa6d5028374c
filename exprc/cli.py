"""The ``exprc`` command line."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    import exprc

    parser = argparse.ArgumentParser(prog="exprc", description="exprc expression compiler")
    parser.add_argument("--version", action="version", version=f"exprc {exprc.__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0
