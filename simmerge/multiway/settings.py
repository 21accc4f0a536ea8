"""The multi-way search's settings, declared once: ``plan_merge``'s defaults, the scan's and the
``plan`` / ``scan`` command-line flags (generated from these fields, help text included) all
come from here. Nothing heavy is imported, so the CLI can read it without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

MODES = ("fast", "exact")
# the shipped plan model was trained on plans of up to 3 experts (larger ones are capped to
# its card, with a warning)
DEFAULT_MAX_MODELS = 3


@dataclass(frozen=True)
class PlanSearch:
    """How ``plan_merge`` searches: the flags of ``simmerge plan`` and ``simmerge scan``."""

    max_models: int = field(
        default=DEFAULT_MAX_MODELS,
        metadata={"help": f"most experts in a plan (default: {DEFAULT_MAX_MODELS})"},
    )
    beam: int | None = field(
        default=None,
        metadata={
            "help": "beam width (default: every chain in fast mode where feasible, else 4)",
            "type": int,
        },
    )
    mode: str = field(
        default=MODES[0],
        metadata={
            "help": "fast: plan from the members' pair features; exact: merge each chain's "
            "prefix and profile it",
            "choices": MODES,
        },
    )
    plan_model: str | None = field(
        default=None,
        metadata={
            "help": "multi-way plan model: folder or shipped name (default: multiway); 'none': "
            "rank plans by the analytic score alone",
            "type": str,
        },
    )


def flag_specs(settings: type = PlanSearch) -> list[tuple[str, dict[str, Any]]]:
    """(``--flag-name``, argparse keyword arguments) for every field of ``settings``."""
    specs = []
    for f in fields(settings):
        kwargs: dict[str, Any] = {"default": f.default, "help": f.metadata["help"]}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        kwargs["type"] = f.metadata.get("type", type(f.default))
        specs.append(("--" + f.name.replace("_", "-"), kwargs))
    return specs
