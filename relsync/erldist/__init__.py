"""A pure-Python Erlang distribution node (hidden), enough to drive a target over RPC."""
