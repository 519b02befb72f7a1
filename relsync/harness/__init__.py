"""Test and demo harness: emulated target boards that run an Erlang/OTP release.

A *board* runs a release from a read-only path (like ``/srv/erlang`` on a Nerves device) and has
a writable path for relsync's shadow tree (like ``/data``). The ``local`` kind runs the node on
this machine; see :class:`relsync.harness.local.LocalBoard`.
"""

from relsync.harness.local import LocalBoard, ReleaseInfo, read_release_info
from relsync.harness.ready import BoardError

__all__ = ["BoardError", "LocalBoard", "ReleaseInfo", "read_release_info"]
