"""The OpenAI wire shapes this API speaks: chat completions and the model list.
Requests refuse fields they do not know, so a parameter this server would ignore
(``top_p``, ``tools``) is a clear 400 instead of a silently different answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    messages: list[OpenAIMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(
        default=None, gt=0, description="wins over max_tokens; neither given: 64")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0,
                                      description="default 0 (greedy)")
    stop: str | list[str] | None = None
    stream: bool = Field(default=False, description="not supported yet: true is refused")
    n: int = Field(default=1, ge=1, le=1, description="only 1 is supported")
    user: str | None = Field(default=None, description="accepted, not used")
    response_format: ResponseFormat | TextFormat | None = Field(
        default=None, description="json_schema: the reply is JSON valid against the schema "
                                  "(generated once more when it is not, then a 500 with "
                                  "the validation error)")


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


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmos"


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]
