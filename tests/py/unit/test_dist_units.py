"""Pure-Python pieces of the distribution node: flags, digests, names, rex encoding."""

from __future__ import annotations

import hashlib

import pytest

from relsync.erldist import etf, handshake, rpc
from relsync.erldist.errors import BadRpc, RpcTimeout
from relsync.erldist.etf import Atom, Pid, Reference
from relsync.erldist.node import default_local_name, is_long_name, split_node_name


def test_advertised_flags() -> None:
    assert handshake.OUR_FLAGS == 0x407070F94
    assert not handshake.OUR_FLAGS & handshake.DFLAG_PUBLISHED  # hidden
    assert not handshake.OUR_FLAGS & (handshake.DFLAG_FRAGMENTS | handshake.DFLAG_ATOM_CACHE)


def test_digest_matches_erlang_definition() -> None:
    assert handshake.digest("secret", 4294967295) == hashlib.md5(b"secret4294967295").digest()


def test_node_names() -> None:
    assert split_node_name("a@127.0.0.1") == ("a", "127.0.0.1")
    with pytest.raises(ValueError):
        split_node_name("nohost@")
    assert is_long_name("127.0.0.1") and is_long_name("host.example")
    assert not is_long_name("vm")
    assert default_local_name("127.0.0.1").endswith("@127.0.0.1")
    assert "." not in default_local_name("somehost").partition("@")[2]


def test_rex_encoder_matches_generic_encoder() -> None:
    pid = Pid(Atom("me@127.0.0.1"), 1, 0, 1234)
    ids = (5, 6, 7)
    ref = Reference(pid.node, pid.creation, ids)
    args: list[etf.Term] = [b"x" * 10_000, 1, Atom("a")]
    fast = b"".join(rpc.RexEncoder(pid).encode(ids, "m", "f", args))
    assert fast == etf.term_to_binary(rpc.rex_call(pid, ref, "m", "f", args))


def test_rex_result() -> None:
    assert rpc.rex_result((Atom("ok"), 1), "n@h", "m:f/0") == (Atom("ok"), 1)
    with pytest.raises(BadRpc) as info:
        rpc.rex_result((Atom("badrpc"), Atom("nodedown")), "n@h", "m:f/0")
    assert info.value.reason == Atom("nodedown")
    assert "\n" not in str(RpcTimeout("n@h", "m:f/0", 1.5))
