"""What a release says about its own node: the name and cookie its start script gives it.

relx releases set them in ``releases/VSN/vm.args`` (or ``vm.args.src``; values that are still
``${VARIABLES}`` are left to the environment). mix releases keep the cookie in
``releases/COOKIE`` and name the node after the release, with short names, unless
``releases/VSN/env.sh`` says otherwise.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from relsync.release import release_name_version

_VM_ARG = re.compile(r"^\s*-(name|sname|setcookie)\s+(\S+)", re.MULTILINE)
_ENV_LINE = re.compile(r"^\s*export\s+(RELEASE_NODE|RELEASE_DISTRIBUTION)=\"?([^\"\s]+)",
                       re.MULTILINE)  # fmt: skip


def _vm_args(root: Path) -> dict[str, str]:
    _name, version = release_name_version(root)
    for name in ("vm.args", "vm.args.src"):
        path = root / "releases" / version / name
        if path.is_file():
            found = dict(_VM_ARG.findall(path.read_text(errors="replace")))
            return {k: v for k, v in found.items() if "${" not in v}
    return {}


def _with_host(name: str, short: bool) -> str:
    if "@" in name:
        return name
    host = socket.gethostname()
    return f"{name}@{host.split('.')[0] if short else socket.getfqdn()}"


def release_node(root: Path) -> str | None:
    """The node name the release at ``root`` starts with (a bare name completed with this
    machine's host name), or None when its files do not say."""
    args = _vm_args(root)
    if "name" in args:
        return _with_host(args["name"], short=False)
    if "sname" in args:
        return _with_host(args["sname"], short=True)
    if (root / "releases" / "COOKIE").is_file():  # a mix release
        name, version = release_name_version(root)
        env_sh = root / "releases" / version / "env.sh"
        env = dict(_ENV_LINE.findall(env_sh.read_text())) if env_sh.is_file() else {}
        node = env.get("RELEASE_NODE", name)
        return None if "$" in node else _with_host(node, env.get("RELEASE_DISTRIBUTION") != "name")
    return None


def release_cookie(root: Path) -> str | None:
    """The cookie the release at ``root`` starts with, or None when its files do not say."""
    cookie = _vm_args(root).get("setcookie")
    if cookie:
        return cookie
    mix_cookie = root / "releases" / "COOKIE"
    if mix_cookie.is_file():
        return mix_cookie.read_text().strip() or None
    return None


def default_cookie(root: Path | None) -> str:
    """The cookie when none is given: ``RELSYNC_COOKIE``, then the release's own, then
    ``~/.erlang.cookie``, then ``cookie`` (the original relsync's default)."""
    from_env = os.environ.get("RELSYNC_COOKIE")
    if from_env:
        return from_env
    from_release = release_cookie(root) if root is not None else None
    if from_release:
        return from_release
    try:
        return (Path.home() / ".erlang.cookie").read_text().strip() or "cookie"
    except OSError:
        return "cookie"
