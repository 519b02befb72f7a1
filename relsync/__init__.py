"""relsync: push a freshly built Erlang/OTP release onto a running target in seconds."""

import warnings

__version__ = "0.1.0"

# asyncssh still supports DSA keys, which cryptography 48 and later deprecate with a warning
# at import time: relsync never offers DSA, and its output stays its own.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")

# The library API (relsync.api): after __version__, which the modules it imports may read.
from relsync.api import Settings, rollback, status, sync  # noqa: E402
from relsync.boards import Board  # noqa: E402
from relsync.engine import SyncReport  # noqa: E402

__all__ = ["Board", "Settings", "SyncReport", "__version__", "rollback", "status", "sync"]
