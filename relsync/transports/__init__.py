"""Transports: one module per way of reaching a target."""
