"""Subcommands of the ``lightlayers`` CLI (one module each)."""
