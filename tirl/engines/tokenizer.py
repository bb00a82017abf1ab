"""A small byte-level BPE tokenizer built locally from the run's own text (no hub download).

``build_tokenizer(texts, vocab_size)`` trains a BPE on ``texts`` and returns a
``transformers.PreTrainedTokenizerFast`` with:

* the ChatML special tokens ``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>`` (also the
  pad token), which are special (skipped by ``decode(..., skip_special_tokens=True)``);
* the rStar2 format tags (``<reason>``, ``</reason>``, ``<answer>``, ``</answer>``,
  ``<tool_call>``, ``</tool_call>``, ``<tool_response>``, ``</tool_response>``, ``<tools>``,
  ``</tools>``) as single *non-special* added tokens: one token each, and always kept by
  ``decode`` so the agent loop can parse them;
* numbers split into chunks of at most ``digit_group`` digits, each chunk one token
  (``digit_group=3``: every string "0".."999" is in the vocabulary, so "123456" is two
  tokens and a tiny model copies a number by copying a token or two); with
  ``digit_group=1`` one digit per token;
* no split at spaces, so the fixed template text merges into a few long tokens and
  rollouts stay short.

What it does not do: it is no general-purpose tokenizer (trained on a few thousand
strings, it tokenizes other text byte by byte), and it has no chat template of its own —
``tirl.agent.format`` renders the rStar2 format.
"""

from __future__ import annotations

import re
from typing import Iterable

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
FORMAT_TAGS = [
    "<reason>", "</reason>", "<answer>", "</answer>",
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
    "<tools>", "</tools>",
]


def number_chunks(digit_group: int) -> list[str]:
    """Every digit string of length 2..digit_group (single digits are in the byte alphabet)."""
    return [str(i).zfill(k) for k in range(2, digit_group + 1) for i in range(10**k)]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512, digit_group: int | None = None):
    """Train a byte-level BPE of ``vocab_size`` tokens on ``texts``; see the module docstring.

    ``vocab_size`` must be at least 256 + the special tokens + tags (the byte alphabet),
    plus the number chunks of ``digit_group`` (1110 for 3). ``digit_group=None`` picks 3
    when ``vocab_size ≥ 1536`` and 1 otherwise. The returned tokenizer's ``len()`` may be
    below ``vocab_size`` when the text has few merges to learn.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if digit_group is None:
        digit_group = 3 if vocab_size >= 1536 else 1
    if digit_group not in (1, 2, 3):
        raise ValueError(f"digit_group={digit_group}: use 1, 2 or 3 digits per number token")
    numbers = number_chunks(digit_group)
    minimum = 256 + len(SPECIAL_TOKENS) + len(FORMAT_TAGS) + len(numbers)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a byte-level tokenizer with "
            f"digit_group={digit_group}; use at least {minimum} (or digit_group=1)"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(rf"\d{{1,{digit_group}}}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # Tags are added before training so that BPE does not spend merges on them.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in FORMAT_TAGS])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(numbers),
        special_tokens=SPECIAL_TOKENS + FORMAT_TAGS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(texts)
    if digit_group > 1:
        # Numbers are tokenized by the added chunk tokens alone: BPE never merges digits, so
        # one number has one tokenization wherever it appears.
        texts = [piece for t in texts for piece in re.split(r"\d+", t) if piece]
    tok.train_from_iterator(texts, trainer=trainer)
    # After training, make sure the tags are registered as non-special added tokens, and
    # add the number chunks the same way (the pre-tokenizer already isolates them).
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in FORMAT_TAGS])
    vocab = tok.get_vocab()
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in numbers if t not in vocab])
    assert not any(t in vocab for t in numbers)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
    )
    return fast
