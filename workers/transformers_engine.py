"""The embedded default engine: a Hugging Face causal LM through transformers, on CPU
(or the one CUDA device this process was pinned to)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from workers.engine import Completion, EngineRequest, apply_stop


class TransformersEngine:
    """Loads lazily on first use, in the process that runs the jobs."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self.device = "cpu"
        self._model: Any = None
        self._tokenizer: Any = None
        # One forward pass at a time: the worker's threads share one copy of the weights.
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
            model = AutoModelForCausalLM.from_pretrained(self.path)
            self._model = model.to(self.device).eval()

    def unload(self) -> None:
        with self._lock:
            self._model = None
            self._tokenizer = None

    def warmup(self) -> None:
        self.load()
        from workers.engine import SamplingParams

        self.generate([EngineRequest(sampling=SamplingParams(max_tokens=2), prompt="warm up")])

    def _encode(self, request: EngineRequest) -> Any:
        if request.messages is not None:
            return self._tokenizer.apply_chat_template(
                [m.model_dump() for m in request.messages], add_generation_prompt=True,
                return_tensors="pt", return_dict=True,
            )
        return self._tokenizer(request.prompt, return_tensors="pt")

    def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
        self.load()
        return [self._generate_one(r) for r in requests]

    def _generate_one(self, request: EngineRequest) -> Completion:
        import torch

        params = request.sampling
        inputs = self._encode(request).to(self.device)
        prompt_len = int(inputs["input_ids"].shape[1])
        context = int(self._model.config.max_position_embeddings)
        if prompt_len + params.max_tokens > context:
            raise ValueError(
                f"prompt of {prompt_len} tokens plus max_tokens {params.max_tokens} exceeds "
                f"the model's context of {context} tokens"
            )
        sampling: dict[str, Any] = {"do_sample": params.temperature > 0}
        if params.temperature > 0:
            sampling["temperature"] = params.temperature
        with self._lock, torch.inference_mode():
            output = self._model.generate(
                **inputs, max_new_tokens=params.max_tokens,
                pad_token_id=self._tokenizer.pad_token_id, **sampling,
            )
        new_tokens = output[0][prompt_len:]
        eos = self._tokenizer.eos_token_id
        hit_eos = bool(len(new_tokens)) and int(new_tokens[-1]) == eos
        text = self._tokenizer.decode(new_tokens, skip_special_tokens=True)
        text, hit_stop = apply_stop(text, params.stop)
        return Completion(
            text=text, finish_reason="stop" if hit_eos or hit_stop else "length",
            prompt_tokens=prompt_len, completion_tokens=len(new_tokens),
        )


def context_length_of(path: str) -> int:
    """The context window a model directory declares (its config.json)."""
    import json
    from pathlib import Path

    config = json.loads((Path(path) / "config.json").read_text())
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if key in config:
            return int(config[key])
    raise ValueError(f"{path}/config.json declares no context length")
