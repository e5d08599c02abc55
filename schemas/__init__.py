"""Typed contracts of llmos-jobs: one pydantic model per task payload and result.

Producers validate against these models and store the payload in the job row; the
Celery message carries only the job id. The JSON Schema files in ``schemas/json``
are generated from these models (``python -m schemas.export``) and a test keeps the
two in sync.
"""

from schemas.common import (
    PRIORITY_CLASSES,
    SCHEMA_VERSION,
    ChatMessage,
    JobKind,
    JobStatus,
    Priority,
    Usage,
    parse_priority,
)
from schemas.language import GenerateRequest, GenerateResult
from schemas.mindspace import MindspaceCreate, MindspaceTurnRequest, MindspaceTurnResult
from schemas.model import EngineKind, ModelOp, ModelOpRequest, ModelOpResult, ModelRegister

__all__ = [
    "PRIORITY_CLASSES",
    "SCHEMA_VERSION",
    "ChatMessage",
    "EngineKind",
    "GenerateRequest",
    "GenerateResult",
    "JobKind",
    "JobStatus",
    "MindspaceCreate",
    "MindspaceTurnRequest",
    "MindspaceTurnResult",
    "ModelOp",
    "ModelOpRequest",
    "ModelOpResult",
    "ModelRegister",
    "Priority",
    "Usage",
    "parse_priority",
]
