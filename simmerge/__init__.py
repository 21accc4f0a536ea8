"""simmerge: predict which model merge to make from similarity signals.

The public API grows stage by stage (see DESIGN.md); heavy submodules are imported lazily so that
``import simmerge`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"
