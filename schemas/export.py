"""Write the JSON Schema file of every contract: ``python -m schemas.export``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.events import JobEvent
from schemas.filters import FilterVerdict, TenantFilters
from schemas.language import GenerateRequest, GenerateResult
from schemas.mindspace import MindspaceCreate, MindspaceTurnRequest, MindspaceTurnResult
from schemas.model import ModelOpRequest, ModelOpResult, ModelRegister
from schemas.observe import SystemSnapshot
from schemas.retention import PruneReport
from schemas.scale import ScaleReport
from schemas.tasks import REQUESTS, RESULTS

CONTRACTS: dict[str, type[BaseModel]] = {
    "generate_request": GenerateRequest,
    "generate_result": GenerateResult,
    "model_register": ModelRegister,
    "model_op_request": ModelOpRequest,
    "model_op_result": ModelOpResult,
    "mindspace_create": MindspaceCreate,
    "mindspace_turn_request": MindspaceTurnRequest,
    "mindspace_turn_result": MindspaceTurnResult,
    "job_event": JobEvent,
    "tenant_filters": TenantFilters,
    "filter_verdict": FilterVerdict,
    **{f"{kind.value}_request": model for kind, model in REQUESTS.items()},
    **{f"{kind.value}_result": model for kind, model in RESULTS.items()},
    "prune_report": PruneReport,
    "system_snapshot": SystemSnapshot,
    "scale_report": ScaleReport,
}

JSON_DIR = Path(__file__).parent / "json"


def rendered() -> dict[str, str]:
    """File name → the JSON Schema text it should hold."""
    return {
        f"{name}.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
        for name, model in CONTRACTS.items()
    }


def main() -> int:
    JSON_DIR.mkdir(exist_ok=True)
    for filename, text in rendered().items():
        (JSON_DIR / filename).write_text(text)
    print(f"wrote {len(CONTRACTS)} schemas to {JSON_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
