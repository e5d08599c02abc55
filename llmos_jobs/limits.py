"""Limits on the size of every field a producer sends, checked before anything is
stored or queued. Each is a setting (``LLMOS_LIMIT_*``), and a refusal names the field,
its size, the limit and the setting, so that a producer knows what to change and an
operator knows what to raise.

The contracts in ``schemas/`` carry fixed sanity bounds; these are the deployment's
own, read from the settings by whoever builds the client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmos_jobs.errors import InvalidRequest
from llmos_jobs.settings import Settings
from schemas.language import GenerateRequest


def _setting(field: str) -> str:
    return f"LLMOS_LIMIT_{field.upper()}"


@dataclass(frozen=True)
class FieldLimits:
    prompt_bytes: int
    message_bytes: int
    messages: int
    persona_bytes: int
    knowledge_bytes: int
    title_chars: int
    stop_strings: int
    stop_bytes: int
    metadata_keys: int
    metadata_key_chars: int
    metadata_value_chars: int
    filename_chars: int
    json_depth: int

    @classmethod
    def from_settings(cls, settings: Settings) -> FieldLimits:
        return cls(**{name: getattr(settings, f"limit_{name}")
                      for name in cls.__dataclass_fields__})

    def _over(self, what: str, size: int, unit: str, limit_field: str) -> None:
        limit: int = getattr(self, limit_field)
        if size > limit:
            raise InvalidRequest(f"{what} is {size} {unit}; the limit is {limit} "
                                 f"({_setting(limit_field)})")

    def text_bytes(self, what: str, value: str | None, limit_field: str) -> None:
        if value is not None:
            self._over(what, len(value.encode()), "bytes", limit_field)

    def chars(self, what: str, value: str | None, limit_field: str) -> None:
        if value is not None:
            self._over(what, len(value), "characters", limit_field)

    def generate(self, request: GenerateRequest) -> None:
        self.text_bytes("prompt", request.prompt, "prompt_bytes")
        if request.messages is not None:
            self._over("messages", len(request.messages), "messages", "messages")
            for index, message in enumerate(request.messages):
                self.text_bytes(f"messages[{index}].content", message.content, "message_bytes")
        self.stop(request.stop)

    def stop(self, stop: Sequence[str]) -> None:
        self._over("stop", len(stop), "strings", "stop_strings")
        for index, text in enumerate(stop):
            self.text_bytes(f"stop[{index}]", text, "stop_bytes")

    def turn(self, message: str) -> None:
        self.text_bytes("message", message, "message_bytes")

    def persona(self, persona: str | None) -> None:
        self.text_bytes("persona", persona, "persona_bytes")

    def knowledge(self, title: str, text: str) -> None:
        self.chars("title", title, "title_chars")
        self.text_bytes(f"document {title[:64]!r}", text, "knowledge_bytes")

    def metadata(self, metadata: Mapping[str, str] | None) -> None:
        if metadata is None:
            return
        self._over("metadata", len(metadata), "keys", "metadata_keys")
        for key, value in metadata.items():
            self.chars(f"metadata key {key[:64]!r}", key, "metadata_key_chars")
            self.chars(f"metadata[{key[:64]!r}]", value, "metadata_value_chars")

    def filename(self, name: str) -> None:
        self.chars("file name", name, "filename_chars")


def json_depth(raw: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets inside strings
    do not count); linear, and without parsing, so a hostile text cannot exhaust the
    parser's recursion before it is refused."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest
