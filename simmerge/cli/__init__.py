"""The command line (``simmerge ...``): parser, shared option groups, every command's handler
and the human-readable formatting; the only layer that prints."""

from simmerge.cli.main import main

__all__ = ["main"]
