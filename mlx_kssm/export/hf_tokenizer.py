"""A model's tokenizer as Hugging Face files (tokenizer.json, tokenizer_config.json and
generation_config.json), built offline, so `transformers.AutoTokenizer.from_pretrained(folder)`
-- how mlx-lm loads every tokenizer -- gives the same ids as mlx_kssm.

- tiktoken encodings (cl100k_base, the others tiktoken knows, a .tiktoken ranks file): a
  byte-level BPE whose ids are the encoding's ranks. Its merges are recovered from the ranks
  (the token of rank r is the merge of two shorter tokens that concatenate to it, applied in
  rank order, as tiktoken applies them), its split pattern is the encoding's own, and its
  special tokens keep their ids; ids the encoding leaves unused become reserved special
  tokens, so every id decodes.
- bytes (character-level models): the 256 bytes as ids 0..255 and <|endoftext|> = 256.

Text reads as mlx_kssm decodes it: the ByteLevel decoder is wrapped in a Sequence, so mlx-lm
streams text with its NaiveStreamingDetokenizer (the tokenizer's own decode, exact) rather
than its BPEStreamingDetokenizer, which drops the space a generation starts with.
`<|endoftext|>` in text is plain text, as in mlx_kssm (and tiktoken, whose encode refuses to
read special tokens from text by default): `split_special_tokens` in tokenizer_config.json
makes transformers encode it byte by byte; its id still decodes to `<|endoftext|>` and ends
generation (eos). The chat template is a base model's: "role: text" lines, then "assistant:".

A compacted vocabulary is not converted here: the exported model maps the base ids itself.
Every conversion is checked on a probe text against the tokenizer it converts; a tokenizer
that cannot be reproduced is refused (ConversionError), never exported approximately.
"""

from __future__ import annotations

import json
import re

from ..data.tokenizer import (SEPARATOR_TEXT, BytesTokenizer, CompactTokenizer,
                              TiktokenTokenizer, describe_tokenizer)

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
# a base model's chat format: each message as a "role: text" line, then "assistant:" for the
# model to go on from (no space after it: BPE tokens carry their leading space)
CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
# what the conversion must reproduce: contractions, digit runs, whitespace runs and line ends,
# punctuation, accents, CJK and emoji (multi-byte UTF-8)
PROBE_TEXT = ("It's 1234567 o'clock, THEY'RE here;  two  spaces\t\ttabs\r\nCRLF\n\n\n"
              "x=3.14159!? 'quoted' naïve café Ünïcode 日本語テキスト 🙂🙃 — end   \n  ")


class ConversionError(Exception):
    """A tokenizer that cannot be written as Hugging Face files faithfully."""


def base_tokenizer(tokenizer):
    """The tokenizer whose ids mlx-lm sees: a compacted one's base."""
    return tokenizer.base if isinstance(tokenizer, CompactTokenizer) else tokenizer


def hf_tokenizer(tokenizer):
    """A `tokenizers.Tokenizer` giving `tokenizer`'s base ids, checked on PROBE_TEXT."""
    base = base_tokenizer(tokenizer)
    if isinstance(base, BytesTokenizer):
        hf = _bytes_tokenizer()
    elif isinstance(base, TiktokenTokenizer):
        hf = _tiktoken_tokenizer(base.encoding)
    else:
        raise ConversionError(f"no Hugging Face conversion for the tokenizer "
                              f"{describe_tokenizer(base.spec)}")
    check_same_ids(hf, base, PROBE_TEXT + SEPARATOR_TEXT)
    return hf


def check_same_ids(hf, base, text: str) -> None:
    # split_special_tokens, as transformers reads it from tokenizer_config.json (the
    # `tokenizers` library does not store it in tokenizer.json)
    hf.encode_special_tokens = True
    theirs = hf.encode(text, add_special_tokens=False).ids
    ours = [int(i) for i in base.encode(text)]
    if theirs != ours:
        at = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b),
                  min(len(theirs), len(ours)))
        raise ConversionError(
            f"the converted {describe_tokenizer(base.spec)} tokenizer splits text differently "
            f"(first difference at token {at} of a probe text: {ours[at:at + 3]} vs "
            f"{theirs[at:at + 3]}): it cannot be used by mlx-lm as is")


def tokenizer_config(tokenizer) -> dict:
    """tokenizer_config.json: the fast tokenizer class, <|endoftext|> (the document separator
    mlx_kssm stops at) as end of sequence but plain text when it is in a text, no tokens added
    around a prompt, the base model's chat template."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": SEPARATOR_TEXT,
            "bos_token": None, "unk_token": None, "pad_token": None, "add_bos_token": False,
            "add_eos_token": False, "clean_up_tokenization_spaces": False,
            "split_special_tokens": True, "model_max_length": 1 << 30,
            "chat_template": CHAT_TEMPLATE}


def generation_config(tokenizer) -> dict:
    """generation_config.json: the id generation stops at (the separator, as a base id)."""
    return {"eos_token_id": int(base_tokenizer(tokenizer).sep_id)}


def tokenizer_files(tokenizer) -> dict:
    """{file name: text} of the three files for `tokenizer`."""
    as_json = lambda obj: json.dumps(obj, indent=2) + "\n"  # noqa: E731
    return {TOKENIZER_JSON: tokenizer_json(tokenizer),
            TOKENIZER_CONFIG: as_json(tokenizer_config(tokenizer)),
            GENERATION_CONFIG: as_json(generation_config(tokenizer))}


_converted: dict = {}  # base tokenizer spec -> tokenizer.json text


def tokenizer_json(tokenizer) -> str:
    """tokenizer.json for `tokenizer`'s base, converted once per process (cl100k_base takes
    seconds; a spec names its encoding, or a ranks file by its SHA-256)."""
    base = base_tokenizer(tokenizer)
    key = json.dumps({k: v for k, v in base.spec.items() if k != "path"}, sort_keys=True)
    if key not in _converted:
        _converted[key] = hf_tokenizer(base).to_str()
    return _converted[key]


# ----------------------------------------------------------------------- byte-level BPE

def byte_to_unicode() -> dict:
    """GPT-2's printable stand-in for each byte (what byte-level BPE vocabularies are
    written in): printable Latin-1 bytes stand for themselves, the others map to 256 + k."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(rest)}}


def _byte_level(vocab: dict, merges: list, pattern: str | None, specials: dict):
    """A byte-level BPE tokenizers.Tokenizer (vocab: text -> id; specials: id -> text)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    # special tokens are in the vocabulary at their own ids (added tokens would get new ones)
    hf = Tokenizer(models.BPE(vocab={**vocab, **{t: i for i, t in specials.items()}},
                              merges=merges, ignore_merges=True))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.pre_tokenizer = byte_level if pattern is None else pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False), byte_level])
    # a Sequence, not ByteLevel itself: mlx-lm then streams with the exact detokenizer
    hf.decoder = decoders.Sequence([decoders.ByteLevel()])
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for _, t in sorted(specials.items())])
    return hf


def _bytes_tokenizer():
    stand_in = byte_to_unicode()
    vocab = {stand_in[b]: b for b in range(256)}
    return _byte_level(vocab, [], None, {BytesTokenizer.sep_id: SEPARATOR_TEXT})


def _tiktoken_tokenizer(encoding):
    specials = {encoding.encode_single_token(t): t for t in encoding.special_tokens_set}
    ranks = {}
    for i in range(encoding.n_vocab):
        if i not in specials:
            try:
                ranks[encoding.decode_single_token_bytes(i)] = i
            except KeyError:  # an id the encoding leaves unused
                specials[i] = f"<|reserved_{i}|>"
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ConversionError(f"the encoding {encoding.name} has no token for {len(missing)} "
                              f"single bytes (e.g. 0x{missing[0]:02x}): a byte-level BPE needs "
                              "all 256")
    stand_in = str.maketrans({chr(b): c for b, c in byte_to_unicode().items()})
    text = lambda token: token.decode("latin-1").translate(stand_in)  # noqa: E731
    return _byte_level({text(t): r for t, r in ranks.items()}, _merges(ranks, text),
                       hf_pattern(encoding._pat_str), specials)


def _merges(ranks: dict, text) -> list:
    """Every (left, right) pair that concatenates to a token, ordered by the token's rank
    (then by the parts' ranks): BPE then merges, among adjacent pairs, the one whose result
    has the lowest rank -- tiktoken's rule."""
    merges = []
    for token, rank in ranks.items():
        pairs = [(ranks[token[:i]], ranks[token[i:]], i) for i in range(1, len(token))
                 if token[:i] in ranks and token[i:] in ranks]
        merges += [(rank, left, right, token, i) for left, right, i in pairs]
    merges.sort()
    return [(text(token[:i]), text(token[i:])) for _, _, _, token, i in merges]


def hf_pattern(pattern: str) -> str:
    """tiktoken's split pattern for the Oniguruma engine of `tokenizers`. Oniguruma reads
    `?+`, `*+`, `++` as possessive, as tiktoken does, but `{1,3}+` as a repeated interval
    (any number of digits in one piece); a plain `{1,3}` is what tiktoken's means there."""
    return re.sub(r"(?<!\\)\}\+", "}", pattern)
