"""Test helpers shared by the pytest suites (real local Erlang nodes, strategies)."""
