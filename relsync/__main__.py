"""``python -m relsync``: the ``relsync`` command."""

import sys

from relsync.cli import main

sys.exit(main())
