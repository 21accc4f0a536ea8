"""The merged model's tokenizer files and chat template (mergekit's ``tokenizer_source`` and
``chat_template``).

simmerge merges models that share one vocabulary (the engine refuses others before reading a
weight), so every input's tokenizer is the same token -> id map and ``tokenizer_source`` only
chooses whose files (special tokens, generation config, chat template) the output carries:
``base``, ``union`` (the shared vocabulary, i.e. the base's) or one of the merged models.
Building a union of *different* vocabularies would need the embedding rows permuted and
resized; that is refused with a typed error rather than done approximately.

``chat_template`` is a Jinja template written into the output (``chat_template.jinja``), or
``auto``: the template most of the inputs use.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from simmerge.errors import PlanError
from simmerge.io.checkpoint import Checkpoint
from simmerge.io.compat import TOKENIZER_FILES
from simmerge.merging.config import MergeConfig, same_path

COPIED_FILES = (
    *TOKENIZER_FILES,
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
TEMPLATE_FILE = "chat_template.jinja"


def _template_of(folder: Path) -> str | None:
    jinja = folder / TEMPLATE_FILE
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8").strip() or None
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        except ValueError:
            return None
        if isinstance(template, list):  # named templates: take the default one
            template = next(
                (t.get("template") for t in template if t.get("name") == "default"), None
            )
        return template.strip() if isinstance(template, str) and template.strip() else None
    return None


def _tokenizer_folder(
    config: MergeConfig, inputs: dict[str, Checkpoint], reference: Checkpoint
) -> Path:
    choice = config.tokenizer_source
    if choice is None or choice == "union":
        return reference.support_dir
    if choice == "base":
        if config.base is None:
            raise PlanError(
                "tokenizer_source: base, but the config names no base_model.",
                "set base_model, or name the model whose tokenizer to keep.",
            )
        choice = config.base
    for path, ckpt in inputs.items():
        if same_path(path, choice):
            return ckpt.support_dir
    raise PlanError(
        f"tokenizer_source {choice!r} is not one of the merged models.",
        "use base, union or one of the merged models: a foreign vocabulary would need the "
        "embedding rows rebuilt, which simmerge does not do.",
    )


def copy_tokenizer(
    config: MergeConfig, inputs: dict[str, Checkpoint], reference: Checkpoint, folder: Path
) -> None:
    """Copy the chosen tokenizer files into ``folder`` and apply ``chat_template``."""
    src = _tokenizer_folder(config, inputs, reference)
    for name in COPIED_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, folder / name)
    template = config.chat_template
    if template is None:
        return
    if template == "auto":
        found = [t for t in (_template_of(c.support_dir) for c in inputs.values()) if t]
        if not found:
            return
        template = Counter(found).most_common(1)[0][0]
    (folder / TEMPLATE_FILE).write_text(template, encoding="utf-8")
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if "chat_template" in cfg:
            del cfg["chat_template"]  # the .jinja file is the one template
            cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    chat_json = folder / "chat_template.json"
    if chat_json.is_file():
        chat_json.unlink()
