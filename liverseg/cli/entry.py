"""``main``: parse the command line, run the subcommand's handler, and turn a ``LiversegError`` into one
line on stderr and exit code 2."""
from __future__ import annotations

import logging
import sys

from ..errors import LiversegError
from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_logger = logging.getLogger("liverseg")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        return args.func(args)
    except LiversegError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"liverseg {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"liverseg {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        package_logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main"]
