"""The OpenAI wire shapes this API speaks: chat completions, completions, their
streamed chunks, and the model list.
Requests refuse fields they do not know, so a parameter this server would ignore
(``top_p``, ``tools``) is a clear 400 instead of a silently different answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.common import DeadlineOptions
from schemas.language import ResponseFormat


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class TextFormat(BaseModel):
    """``response_format: {"type": "text"}``: plain text, the default."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, description="accepted, not used")

    def as_chat_message(self) -> dict[str, str]:
        """The llmos ``ChatMessage`` fields; the client validates them (an empty text is
        a 400 naming the message)."""
        text = self.content if isinstance(self.content, str) else "".join(
            part.text for part in self.content)
        # "developer" is OpenAI's newer name for the system role.
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(
        default=False, description="a last chunk with no choices carries the usage")


class Streamable(BaseModel):
    """``stream`` and its options, as both completion routes take them."""

    stream: bool = Field(default=False, description="true: server-sent chunks as the "
                         "tokens are decoded, then [DONE]")
    stream_options: StreamOptions | None = Field(default=None, description="with stream")

    @model_validator(mode="after")
    def _options_need_stream(self) -> Streamable:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(Streamable, DeadlineOptions):
    """OpenAI's chat completions; ``deadline`` and ``sla`` are this server's extensions
    (docs/deadlines.md): past it, the job not started answers 504 deadline_expired."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    messages: list[OpenAIMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(
        default=None, gt=0, description="wins over max_tokens; neither given: 64")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0,
                                      description="default 0 (greedy)")
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1, description="only 1 is supported")
    user: str | None = Field(default=None, description="accepted, not used")
    response_format: ResponseFormat | TextFormat | None = Field(
        default=None, description="json_schema: the reply is JSON valid against the schema "
                                  "(generated once more when it is not, then a 500 with "
                                  "the validation error)")


class CompletionRequest(Streamable, DeadlineOptions):
    """OpenAI's (legacy) completions: one prompt, continued; ``deadline`` and ``sla`` as
    for chat completions."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    prompt: str = Field(min_length=1, description="one prompt (lists are not supported)")
    max_tokens: int | None = Field(default=None, gt=0, description="default 64")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0,
                                      description="default 0 (greedy)")
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1, description="only 1 is supported")
    user: str | None = Field(default=None, description="accepted, not used")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt tokens served from the prefix cache")


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ChatCompletion(BaseModel):
    id: str = Field(description="chatcmpl- followed by the llmos job id")
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str = Field(description="chatcmpl- followed by the llmos job id")
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None


class TextChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class TextCompletion(BaseModel):
    """A completion, and (with stream) each chunk of one: the same object."""

    id: str = Field(description="cmpl- followed by the llmos job id")
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: CompletionUsage | None = None


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmos"


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str] = Field(description="a text, or a list of texts (at most 2048)")
    model: str = Field(min_length=1, description="all-MiniLM-L6-v2")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: the little-endian float32 bytes of each vector")
    dimensions: int | None = Field(default=None, ge=384, le=384,
                                   description="only 384, the model's own, is supported")
    user: str | None = Field(default=None, description="accepted, not used")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
