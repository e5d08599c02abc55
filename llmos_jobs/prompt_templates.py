"""The prompts of task presets: Jinja2 templates kept as data files,
``templates/<kind>/<family>.j2``, one per model family (the ``model_type`` of the
model's config.json, e.g. ``llama``) with ``default.j2`` for every other family.

They are rendered in Jinja2's immutable sandbox: a template is data that an operator may
edit, and must not reach Python objects beyond the values it is given."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from jinja2 import FileSystemLoader, StrictUndefined, Template
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import JsonValue

from schemas.tasks import ExtractRequest, PresetRequest, SummariseRequest

TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_FAMILY = "default"
RETRY_KIND = "json_retry"  # the second try of a structured output
_FAMILY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


@lru_cache(maxsize=8)
def _environment(root: Path) -> ImmutableSandboxedEnvironment:
    # StrictUndefined: a template naming a variable that is not given fails loudly
    # instead of rendering an empty string into the prompt. The file's last newline is
    # kept: a chat format's open assistant turn ends with one.
    return ImmutableSandboxedEnvironment(loader=FileSystemLoader(str(root)),
                                         undefined=StrictUndefined, autoescape=False,
                                         keep_trailing_newline=True)


def template_for(kind: str, family: str, root: Path = TEMPLATES) -> Template:
    """The template of ``kind`` for ``family``, or the kind's default one."""
    family = family.strip().lower()
    if _FAMILY.fullmatch(family) and (root / kind / f"{family}.j2").is_file():
        return _environment(root).get_template(f"{kind}/{family}.j2")
    return _environment(root).get_template(f"{kind}/{DEFAULT_FAMILY}.j2")


def render_preset(request: PresetRequest, kind: str, family: str,
                  root: Path = TEMPLATES) -> str:
    """The prompt of a preset request for a model of ``family``."""
    values: dict[str, JsonValue] = request.model_dump(mode="json", exclude={"version"})
    if isinstance(request, SummariseRequest):
        values["max_tokens"] = request.max_tokens
    if isinstance(request, ExtractRequest):
        values["schema_json"] = json.dumps(request.json_schema, indent=2, ensure_ascii=False)
    return template_for(kind, family, root).render(values)


def render_retry(prompt: str, output: str, error: str, family: str,
                 root: Path = TEMPLATES) -> str:
    """The prompt of the second try of a structured output whose first try, ``output``
    to ``prompt``, failed its schema with ``error``."""
    return template_for(RETRY_KIND, family, root).render(
        prompt=prompt, output=output, error=error)
