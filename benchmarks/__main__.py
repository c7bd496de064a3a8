import sys

from .cli import _exit_on_sigterm, main

_exit_on_sigterm()
sys.exit(main())
