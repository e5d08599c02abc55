"""The task presets' own calls on the Python client (docs/presets.md): each fills in
the fields of one preset and queues it through ``LlmosClient.task``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from llmos_jobs.db.tables import JobPublic
from schemas.common import JobKind


class PresetCalls:
    def task(self, kind: JobKind | str, request: dict[str, Any], *,
             priority: int | str = "default", webhook: str | None = None,
             deadline: datetime | str | None = None, sla: str | None = None) -> JobPublic:
        raise NotImplementedError  # LlmosClient.task

    def summarise(self, *, model: str, text: str, length: str | int = "medium",
                  style: str = "paragraph", temperature: float = 0.0,
                  timeout_s: float | None = None, priority: int | str = "default",
                  webhook: str | None = None,
                  deadline: datetime | str | None = None, sla: str | None = None) -> JobPublic:
        """Summarise ``text``: ``length`` short, medium, long or a budget in tokens;
        ``style`` paragraph or bullets."""
        return self.task(JobKind.summarise, {
            "model": model, "text": text, "length": length, "style": style,
            "temperature": temperature, "timeout_s": timeout_s},
            priority=priority, webhook=webhook, deadline=deadline, sla=sla)

    def translate(self, *, model: str, text: str, target_language: str,
                  source_language: str | None = None, max_tokens: int = 256,
                  temperature: float = 0.0, timeout_s: float | None = None,
                  priority: int | str = "default", webhook: str | None = None,
                  deadline: datetime | str | None = None, sla: str | None = None) -> JobPublic:
        """Translate ``text`` into ``target_language``."""
        return self.task(JobKind.translate, {
            "model": model, "text": text, "target_language": target_language,
            "source_language": source_language, "max_tokens": max_tokens,
            "temperature": temperature, "timeout_s": timeout_s},
            priority=priority, webhook=webhook, deadline=deadline, sla=sla)

    def answer(self, *, model: str, question: str, context: Sequence[str],
               max_tokens: int = 128, temperature: float = 0.0,
               timeout_s: float | None = None, priority: int | str = "default",
               webhook: str | None = None,
               deadline: datetime | str | None = None, sla: str | None = None) -> JobPublic:
        """Answer ``question`` from the ``context`` passages; the result lists the
        passages the answer cites."""
        return self.task(JobKind.answer, {
            "model": model, "question": question, "context": list(context),
            "max_tokens": max_tokens, "temperature": temperature, "timeout_s": timeout_s},
            priority=priority, webhook=webhook, deadline=deadline, sla=sla)

    def classify(self, *, model: str, text: str, labels: Sequence[str], max_tokens: int = 16,
                 temperature: float = 0.0, timeout_s: float | None = None,
                 priority: int | str = "default", webhook: str | None = None,
                 deadline: datetime | str | None = None, sla: str | None = None) -> JobPublic:
        """The one of ``labels`` that fits ``text``."""
        return self.task(JobKind.classify, {
            "model": model, "text": text, "labels": list(labels), "max_tokens": max_tokens,
            "temperature": temperature, "timeout_s": timeout_s},
            priority=priority, webhook=webhook, deadline=deadline, sla=sla)

    def extract(self, *, model: str, text: str, json_schema: dict[str, Any],
                max_tokens: int = 256, temperature: float = 0.0,
                timeout_s: float | None = None, priority: int | str = "default",
                webhook: str | None = None,
                deadline: datetime | str | None = None, sla: str | None = None) -> JobPublic:
        """The fields ``json_schema`` describes, read from ``text`` and validated."""
        return self.task(JobKind.extract, {
            "model": model, "text": text, "json_schema": json_schema,
            "max_tokens": max_tokens, "temperature": temperature, "timeout_s": timeout_s},
            priority=priority, webhook=webhook, deadline=deadline, sla=sla)
