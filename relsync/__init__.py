"""relsync: push a freshly built Erlang/OTP release onto a running target in seconds."""

__version__ = "0.1.0"
