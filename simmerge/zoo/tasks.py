"""Synthetic character-level tasks of the tiny zoo.

Each task maps a lowercase string ``x`` to an answer string; a prompt is ``"<tag>" + x + "="``
and the model must continue with the answer and EOS. Tasks were chosen from the ones a 1 M
parameter Llama learns in a few hundred steps (docs/results/zoo.md): they stress different
position-wise mappings, so their fine-tuned experts move different weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
SEPARATOR = "="


def _swap_pairs(x: str) -> str:
    chars = list(x)
    for i in range(0, len(chars) - 1, 2):
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def _shift(x: str, k: int) -> str:
    return "".join(ALPHABET[(ALPHABET.index(c) + k) % len(ALPHABET)] for c in x)


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    fn: Callable[[str], str]
    description: str

    @property
    def tag(self) -> str:
        return f"<{self.name}>"

    def prompt(self, x: str) -> str:
        return f"{self.tag}{x}{SEPARATOR}"

    def sample(self, rng: np.random.Generator, length: int) -> tuple[str, str]:
        """A random input of ``length`` letters and its answer."""
        x = "".join(ALPHABET[i] for i in rng.integers(0, len(ALPHABET), size=length))
        return x, self.fn(x)


# Registry (explicit, ordered). The tokenizer reserves a tag for every task here, so all zoo
# sizes share one vocabulary.
TASKS: dict[str, SyntheticTask] = {
    t.name: t
    for t in (
        SyntheticTask("reverse", lambda x: x[::-1], "reverse the string"),
        SyntheticTask("sort", lambda x: "".join(sorted(x)), "sort the letters"),
        SyntheticTask("rotate", lambda x: x[1:] + x[:1], "move the first letter to the end"),
        SyntheticTask("caesar", lambda x: _shift(x, 1), "shift every letter by +1"),
        SyntheticTask("swap", _swap_pairs, "swap adjacent letter pairs"),
        SyntheticTask("dup", lambda x: "".join(c + c for c in x), "double every letter"),
        SyntheticTask("copy", lambda x: x, "copy the string"),
        SyntheticTask("rotr", lambda x: x[-1:] + x[:-1], "move the last letter to the front"),
        SyntheticTask("shift3", lambda x: _shift(x, 3), "shift every letter by +3"),
    )
}
