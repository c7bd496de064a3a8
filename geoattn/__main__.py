"""``python -m geoattn doctor [...]``: see :mod:`geoattn.doctor`."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "doctor":
        print("usage: python -m geoattn doctor [--cxx COMPILER] [--target TARGET] [--rebuild]\n"
              "(python -m geoattn doctor --help for details)", file=sys.stderr)
        return 2
    from .doctor import main as doctor

    return doctor(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
