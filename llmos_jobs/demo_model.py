"""Build a small Llama model locally (nothing is downloaded): a BPE tokenizer trained
on a generated corpus, a small LlamaConfig and seeded random weights. Its text is
meaningless; everything around it is real."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS = [
    "the",
    "a",
    "model",
    "job",
    "queue",
    "worker",
    "token",
    "cache",
    "prefix",
    "batch",
    "priority",
    "memory",
    "context",
    "mindspace",
    "tenant",
    "history",
    "answer",
    "question",
    "summary",
    "translate",
    "result",
    "status",
    "run",
    "fast",
    "slow",
    "small",
    "large",
    "first",
    "last",
    "every",
    "each",
    "some",
    "many",
    "one",
    "two",
    "three",
    "of",
    "to",
    "in",
    "on",
    "with",
    "for",
    "from",
    "by",
    "is",
    "are",
    "was",
    "be",
    "can",
    "will",
    "may",
    "must",
    "should",
    "runs",
    "keeps",
    "sends",
    "reads",
    "writes",
    "holds",
    "serves",
    "waits",
    "finishes",
    "starts",
    "stops",
    "loads",
]


@dataclass(frozen=True)
class ModelSize:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int


SIZES: dict[str, ModelSize] = {
    # ~0.3M parameters: fast enough for tests and the demo on 2 cores.
    "tiny": ModelSize(1024, 64, 172, 2, 4, 2, 2048),
    # ~100M parameters: for benchmarks that need realistic compute per token.
    "base": ModelSize(8192, 768, 2048, 12, 12, 12, 2048),
}


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))).capitalize() + "."
        for _ in range(lines)
    ]


def _unprintable(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Special tokens, and tokens that decode to a stray byte or a control character:
    the demo's output stays readable text."""
    bad = set(tokenizer.all_special_ids)
    for token in range(len(tokenizer)):
        text = tokenizer.decode([token])
        if "\ufffd" in text or not text.replace(" ", "").isprintable():
            bad.add(token)
    return sorted(bad)


def create_demo_model(path: Path, *, size: str = "tiny", seed: int = 0,
                      dtype: str = "float32", initializer_range: float = 0.5,
                      tokenizer_seed: int = 0) -> Path:
    """Write a model directory loadable by ``AutoModelForCausalLM.from_pretrained``.

    ``seed`` draws the weights; ``tokenizer_seed`` the corpus the tokenizer is trained
    on. Models of one size and tokenizer seed differ only in their weights, like two
    checkpoints of one model: one can take the other's weights in place.

    Weights drawn with a wide ``initializer_range`` give logits far apart, so the
    greedy output changes from token to token (the default 0.02 repeats one token
    forever, which would hide a wrong key or value) and rounding differences between
    batch shapes cannot flip a choice; ``dtype="float64"`` makes that certain for
    tests that compare outputs token for token. Special tokens' output rows are zero,
    as are those of stray bytes, so generation never emits them and runs on to ``max_tokens``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(tokenizer_seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    with torch.no_grad():
        model.lm_head.weight[_unprintable(fast)] = 0
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
