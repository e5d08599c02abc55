"""SGLang's own request and response shapes, for the fakes that stand in for it.

Verified by reading sgl-project/sglang at commit 001067fffe33427bee0ed2f007fb7551a1d76b44
(the 0.5.2x line): python/sglang/srt/managers/io_struct.py (GenerateReqInput),
entrypoints/engine.py (Engine.async_generate), server_args.py, and the meta_info that
managers/tokenizer_manager.py builds. A server ignores a body field it does not know,
so a misspelt field would silently do nothing: the fakes refuse unknown names."""

from __future__ import annotations

from typing import Any

from workers.engines.base import EngineRequest, EngineSampling

# Every field of GenerateReqInput (io_struct.py) at that commit.
GENERATE_REQ_INPUT_FIELDS = frozenset({
    "rid", "session_id", "text", "input_ids", "input_embeds", "image_data", "video_data",
    "audio_data", "mm_hashes", "mm_content_hashes", "use_audio_in_video", "video_config",
    "sampling_params", "return_logprob", "logprob_start_len", "top_logprobs_num",
    "token_ids_logprob", "return_sampling_mask", "return_text_in_logprobs",
    "return_flat_raw_top_logprobs", "return_flat_raw_top_logprobs_b64", "stream",
    "log_metrics", "return_hidden_states", "return_routed_experts",
    "routed_experts_start_len", "return_indexer_topk", "modalities", "session_params",
    "lora_path", "lora_id", "custom_logit_processor", "positional_embed_overrides",
    "bootstrap_host", "bootstrap_port", "bootstrap_room", "bootstrap_pair_key",
    "decode_tp_size", "routed_dp_rank", "data_parallel_rank", "disagg_prefill_dp_rank",
    "kv_router_hint", "routing_key", "conversation_id", "http_worker_ipc", "background",
    "require_reasoning", "max_thinking_tokens", "priority", "extra_key", "no_logs",
    "custom_labels", "return_bytes", "return_entropy", "return_prompt_token_ids",
    "external_trace_header", "received_time", "need_wait_for_mm_inputs",
    "num_items_assigned", "encoder_urls", "max_dynamic_patch", "min_dynamic_patch",
    "image_max_dynamic_patch", "video_max_dynamic_patch", "images_config",
    "multi_item_delimiter_indices", "cache_salt",
})

# EngineSampling keys llmos sends (sampling/sampling_params.py).
# json_schema: SamplingParams.json_schema, a JSON Schema as text, for constrained decoding.
SAMPLING_PARAMS_KEYS = frozenset({"max_new_tokens", "temperature", "stop", "json_schema"})

LENGTH = {"type": "length", "length": 4}  # FINISH_LENGTH.to_json()
EOS = {"type": "stop", "matched": 2}  # FINISH_MATCHED_TOKEN.to_json()
# FINISH_ABORT.to_json() for a request aborted by rid (scheduler.py abort_request)
ABORTED = {"type": "abort", "message": "Abort before prefill", "status_code": None,
           "err_type": None}


def output(text: str, finish: dict[str, Any], prompt: int, completion: int,
           cached: int = 0, rid: str = "rid") -> dict[str, Any]:
    """One element of a /generate or Engine.generate answer (tokenizer_manager.py)."""
    return {"text": text, "output_ids": list(range(completion)), "meta_info": {
        "id": rid, "finish_reason": finish, "prompt_tokens": prompt,
        "completion_tokens": completion, "cached_tokens": cached, "e2e_latency": 0.01}}


def check_generate_fields(fields: Any) -> None:
    unknown = set(fields) - GENERATE_REQ_INPUT_FIELDS
    assert not unknown, f"not GenerateReqInput fields: {sorted(unknown)}"


def check_sampling_params(params: Any) -> None:
    for one in params if isinstance(params, list) else [params]:
        assert set(one) <= SAMPLING_PARAMS_KEYS, one


def common_prefix(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class RadixCache:
    """What SGLang's radix cache shows through meta_info.cached_tokens: the longest
    prefix seen before under the same key; with ``salted`` False every salt shares one
    tree, as a runtime that ignores cache_salt/extra_key does."""

    def __init__(self, *, salted: bool = True) -> None:
        self.salted = salted
        self.seen: dict[str | None, list[tuple[Any, ...]]] = {}

    def lookup_and_insert(self, tokens: tuple[Any, ...], salt: str | None) -> int:
        key = (salt or None) if self.salted else None
        tree = self.seen.setdefault(key, [])
        cached = max((common_prefix(tokens, old) for old in tree), default=0)
        tree.append(tokens)
        return min(cached, len(tokens) - 1)  # the last token is always computed


def req(prompt: str | None = None, *, priority: int = 5, max_tokens: int = 4,
        stop: tuple[str, ...] = (), **kw: Any) -> EngineRequest:
    return EngineRequest(sampling=EngineSampling(max_tokens=max_tokens, stop=stop),
                         prompt=prompt, priority=priority, **kw)
