"""How a handler answers: one JSON document with ``--json``, text otherwise."""

from __future__ import annotations

import argparse
import json
from typing import Any


def emit(args: argparse.Namespace, payload: Any, text: str) -> int:
    """Print ``payload`` as JSON (``--json``) or ``text``; the handler's exit status (0)."""
    print(json.dumps(payload, indent=2, default=str) if args.json else text)
    return 0


def progress(args: argparse.Namespace) -> bool:
    """Progress bars (on stderr) unless ``--quiet``."""
    return not args.quiet
