"""Mindspace family: a persistent, isolated context; create and turn."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.common import Contract, Usage


class MindspaceCreate(Contract):
    model: str = Field(min_length=1)
    name: str | None = Field(default=None, max_length=128)
    persona: str | None = Field(default=None, description="system prompt of every turn")


class MindspaceTurnRequest(Contract):
    version: Literal[1] = 1
    mindspace_id: str = Field(min_length=1)
    message: str = Field(min_length=1)
    max_tokens: int = Field(default=64, gt=0)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    timeout_s: float | None = Field(
        default=None, gt=0, le=86_400,
        description="seconds the turn may run once started (then it fails with reason "
                    "'timeout'); the worker's LLMOS_JOB_TIME_LIMIT_S caps it")


class MindspaceTurnResult(Contract):
    version: Literal[1] = 1
    mindspace_id: str
    reply: str
    usage: Usage
