"""``python -m tasklanes demo``: the lesson of the library, measured on this machine."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print("usage: python -m tasklanes demo [--quick]")
        print("  demo: run the same batches serially and through each lane, with timings")
        return 0 if args else 2
    if args[0] == "demo":
        from ._demo import run_demo

        return run_demo(quick="--quick" in args[1:])
    print(f"unknown command {args[0]!r}; try: python -m tasklanes demo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
