"""Hand-built tokenizers of other families than the student's (SmolLM2: byte-level BPE), for cross-tokenizer tests."""

from string import ascii_letters, digits, punctuation

CHAT_TEMPLATE = (
    "{% for m in messages %}<start>{{ m['role'] }}\n{{ m['content'] }}<end>\n{% endfor %}"
    "{% if add_generation_prompt %}<start>assistant\n{% endif %}"
)


def byte_fallback_tokenizer():
    """A SentencePiece-style BPE (``▁`` for spaces, ``<0xNN>`` byte fallback, Gemma's decoder chain) whose few
    merges split most English words differently from SmolLM2; non-ASCII text falls back to bytes."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>", "<start>", "<end>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "\n"] + list(ascii_letters + digits + punctuation)
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("a", "r"), ("ar", "r"), ("▁", "s"), ("e", "a"), ("▁s", "ea")]
    pieces += ["".join(m) for m in merges]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    raw = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    raw.normalizer = normalizers.Replace(" ", "▁")
    raw.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<eos>",
        additional_special_tokens=specials[3:],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok
