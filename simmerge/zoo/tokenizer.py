"""Character-level tokenizer of the tiny zoo, saved with ``save_pretrained`` (works offline).

Vocabulary: ``<pad> <bos> <eos> <unk>``, one tag token per task in :data:`TASKS`, the separator
and the letters. Encoding with special tokens prepends ``<bos>``; decoding fuses characters
without spaces.
"""

from __future__ import annotations

from .tasks import ALPHABET, SEPARATOR, TASKS

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


def vocabulary() -> dict[str, int]:
    tokens = [*SPECIALS, *(t.tag for t in TASKS.values()), SEPARATOR, *ALPHABET]
    return {tok: i for i, tok in enumerate(tokens)}


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` over :func:`vocabulary`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tags = [t.tag for t in TASKS.values()]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=tags,
    )
    return fast
