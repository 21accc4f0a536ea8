"""Natural-language tasks for experts fine-tuned from a real pretrained LLM.

Every task is generated locally and deterministically from a seed (no data set is downloaded),
has an exact answer, and is short enough that a 135 M-parameter model fine-tuned on a CPU for a
minute learns it. They are chosen so that merging has something to decide:

* **shared prompt formats with different outputs** -- ``add`` / ``sub`` ("Compute: 37 + 48 =" vs
  "Compute: 91 - 27 ="), ``words_en`` / ``words_fr`` / ``words_de`` ("Write 47 in English
  words:"), ``sort_asc`` / ``sort_desc``: experts that read the same prompt shape but must answer
  differently, where averaging operators blur one into the other;
* **unrelated skills** -- unit conversion, calendar facts, JSON field extraction, rewriting in
  capitals -- which move different weights;
* **multiple choice** -- ``days_in_month`` and ``larger`` are scored by log-likelihood of the
  choices as well as by exact match, so both evaluation kinds of the harness are exercised.

A task is a :class:`TextTask`: ``sample(rng)`` gives one (prompt, answer, choices) example. The
answer is what follows the prompt after one space (the trainer appends EOS).
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simmerge.errors import ConfigError

Example = tuple[str, str, tuple[str, ...] | None]  # prompt, answer, choices (None: exact match)


@dataclass(frozen=True)
class TextTask:
    name: str
    family: str  # tasks of one family share a prompt format
    description: str
    make: Callable[[np.random.Generator], Example]

    def sample(self, rng: np.random.Generator) -> Example:
        return self.make(rng)

    def examples(self, seed: int, n: int, *, exclude: set[str] = frozenset()) -> list[Example]:
        """``n`` distinct examples from ``seed`` whose prompts are not in ``exclude`` (so eval
        sets never overlap training data)."""
        rng = np.random.default_rng(seed)
        seen, out = set(exclude), []
        for _ in range(100 * n):
            ex = self.make(rng)
            if ex[0] not in seen:
                seen.add(ex[0])
                out.append(ex)
                if len(out) == n:
                    break
        return out


def _int(rng: np.random.Generator, low: int, high: int) -> int:
    return int(rng.integers(low, high + 1))


def _add(rng):
    a, b = _int(rng, 10, 99), _int(rng, 10, 99)
    return f"Compute: {a} + {b} =", str(a + b), None


def _sub(rng):
    a, b = sorted((_int(rng, 10, 99), _int(rng, 10, 99)), reverse=True)
    return f"Compute: {a} - {b} =", str(a - b), None


def _num2words() -> Callable[..., str]:
    try:
        from num2words import num2words
    except ImportError:
        raise ConfigError(
            "The number-words tasks of the real-LLM zoo need the 'num2words' package.",
            "install it with `pip install 'simmerge[zoo]'`.",
        ) from None
    return num2words


def _words(lang: str, language: str):
    def make(rng):
        num2words = _num2words()
        n = _int(rng, 11, 999)  # enough distinct prompts for disjoint train/eval/probe sets
        return f"Write {n} in {language} words:", num2words(n, lang=lang), None

    return make


_UNITS = (("km", "m", 1000), ("kg", "g", 1000), ("m", "cm", 100), ("h", "min", 60))


def _units(rng):
    src, dst, factor = _UNITS[_int(rng, 0, len(_UNITS) - 1)]
    n = _int(rng, 2, 199)  # enough distinct prompts for disjoint train/eval/probe sets
    return f"Convert {n} {src} to {dst}:", str(n * factor), None


def _days_in_month(rng):
    year, month = _int(rng, 1990, 2030), _int(rng, 1, 12)
    days = calendar.monthrange(year, month)[1]
    prompt = f"How many days does {calendar.month_name[month]} {year} have?"
    return prompt, str(days), ("28", "29", "30", "31")


def _numbers(rng, k: int) -> list[int]:
    return [int(x) for x in rng.choice(np.arange(1, 100), size=k, replace=False)]


def _sort(descending: bool):
    word = "descending" if descending else "ascending"

    def make(rng):
        xs = _numbers(rng, _int(rng, 3, 5))
        ys = sorted(xs, reverse=descending)
        return (
            f"Sort {word}: {', '.join(map(str, xs))} ->",
            ", ".join(map(str, ys)),
            None,
        )

    return make


_NAMES = ("Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon")
_CITIES = ("Paris", "Lima", "Oslo", "Cairo", "Quito", "Rome", "Tokyo", "Dakar", "Kyiv", "Perth")
_COLORS = ("red", "blue", "green", "black", "white", "amber", "teal", "gold", "grey", "pink")


def _json_get(rng):
    record = {
        "name": _NAMES[_int(rng, 0, 9)],
        "city": _CITIES[_int(rng, 0, 9)],
        "color": _COLORS[_int(rng, 0, 9)],
        "age": _int(rng, 18, 90),
    }
    keys = list(record)
    order = [keys[i] for i in rng.permutation(len(keys))]
    key = order[_int(rng, 0, len(order) - 1)]
    doc = json.dumps({k: record[k] for k in order})
    return f'Extract "{key}" from {doc}:', str(record[key]), None


_WORDS = (
    "the", "red", "fox", "runs", "over", "a", "lazy", "dog", "in", "old", "town", "near", "river",
    "small", "bird", "sings", "at", "dawn", "cold", "wind",
)  # fmt: skip


def _upper(rng):
    words = [_WORDS[i] for i in rng.integers(0, len(_WORDS), size=_int(rng, 2, 4))]
    text = " ".join(words)
    return f"Rewrite in capitals: {text} ->", text.upper(), None


def _larger(rng):
    a, b = _numbers(rng, 2)
    return f"Which is larger, {a} or {b}?", str(max(a, b)), (str(a), str(b))


TEXT_TASKS: dict[str, TextTask] = {
    t.name: t
    for t in (
        TextTask("add", "compute", "add two 2-digit numbers", _add),
        TextTask("sub", "compute", "subtract two 2-digit numbers", _sub),
        TextTask("words_en", "words", "a number in English words", _words("en", "English")),
        TextTask("words_fr", "words", "a number in French words", _words("fr", "French")),
        TextTask("words_de", "words", "a number in German words", _words("de", "German")),
        TextTask("units", "units", "convert km/kg/m/h to m/g/cm/min", _units),
        TextTask("days_in_month", "calendar", "days in a month of a year", _days_in_month),
        TextTask("sort_asc", "sort", "sort a list of numbers ascending", _sort(False)),
        TextTask("sort_desc", "sort", "sort a list of numbers descending", _sort(True)),
        TextTask("json_get", "json", "the value of a key in a JSON object", _json_get),
        TextTask("upper", "rewrite", "rewrite a phrase in capitals", _upper),
        TextTask("larger", "compare", "the larger of two numbers", _larger),
    )
}


# --- general ability ---------------------------------------------------------------------------

# Openings of plain English text: the base's own greedy continuations of these become the
# general-ability eval (token accuracy), so a merge that forgets how the base writes is visible.
GENERAL_TOPICS = (
    "the water cycle",
    "the history of the printing press",
    "how bees make honey",
    "the planet Mars",
    "why the sky is blue",
    "the Roman Empire",
    "how a bicycle works",
    "the life of a tree",
    "the invention of the telephone",
    "volcanoes",
    "the human heart",
    "the moon landing",
    "how bread is made",
    "the Amazon rainforest",
    "electric cars",
    "the Olympic Games",
    "the Great Wall of China",
    "how vaccines work",
    "the ocean tides",
    "the piano",
    "chess",
    "the Sahara desert",
    "photosynthesis",
    "the internet",
    "the French Revolution",
    "honeybees and flowers",
    "earthquakes",
    "the solar system",
    "how airplanes fly",
    "coffee",
    "the Nile river",
    "dinosaurs",
)
GENERAL_TEMPLATES = ("Here is a short paragraph about {}:", "Explain {} in simple words.")


def general_prompts() -> list[str]:
    return [t.format(topic) for t in GENERAL_TEMPLATES for topic in GENERAL_TOPICS]
