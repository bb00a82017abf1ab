"""A small byte-level BPE tokenizer built locally from the run's own text (no hub download).

``build_tokenizer(texts, vocab_size)`` trains a BPE on ``texts`` and returns a
``transformers.PreTrainedTokenizerFast`` with:

* the ChatML special tokens ``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>`` (also the
  pad token), which are special (skipped by ``decode(..., skip_special_tokens=True)``);
* the rStar2 format tags (``<reason>``, ``</reason>``, ``<answer>``, ``</answer>``,
  ``<tool_call>``, ``</tool_call>``, ``<tool_response>``, ``</tool_response>``, ``<tools>``,
  ``</tools>``) as single *non-special* added tokens: one token each, and always kept by
  ``decode`` so the agent loop can parse them;
* digits split one per token, so a tiny model can copy and compute with numbers digit by
  digit, and fixed template words merge into few tokens.

What it does not do: it is no general-purpose tokenizer (trained on a few thousand
strings, it tokenizes other text byte by byte), and it has no chat template of its own —
``tirl.agent.format`` renders the rStar2 format.
"""

from __future__ import annotations

from typing import Iterable

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
FORMAT_TAGS = [
    "<reason>", "</reason>", "<answer>", "</answer>",
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
    "<tools>", "</tools>",
]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Train a byte-level BPE of ``vocab_size`` tokens on ``texts``; see the module docstring.

    ``vocab_size`` must be at least 256 + the special tokens + tags (byte alphabet); the
    returned tokenizer's ``len()`` may be slightly below ``vocab_size`` when the text has
    few merges to learn.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    minimum = 256 + len(SPECIAL_TOKENS) + len(FORMAT_TAGS)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a byte-level tokenizer; use at least {minimum}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # Tags are added before training so that BPE does not spend merges on them.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in FORMAT_TAGS])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + FORMAT_TAGS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    # After training, make sure the tags are registered as non-special added tokens.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in FORMAT_TAGS])
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
