"""Reading a model's output into the result of a task preset: the passages an answer
cites, the label a classification names, the JSON a structured output holds. Pure
functions; what they cannot read is an OutputInvalid that says why."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from pydantic import JsonValue
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable

from schemas.tasks import ClassifyMatch


class OutputInvalid(Exception):
    """The model's output is not what its schema asks for (the message says why)."""


# [2], [1, 3], [1][2], [1; 2]: numbers inside square brackets.
_CITATION = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")
_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


def citations(answer: str, passages: int) -> list[int]:
    """Indices (from 0) of the passages ``answer`` cites as [n] (numbered from 1, as the
    prompt numbers them), in order of first citation; numbers beyond the passages are
    not citations."""
    cited: list[int] = []
    for group in _CITATION.finditer(answer):
        for number in re.split(r"\s*[,;]\s*", group.group(1)):
            index = int(number) - 1
            if 0 <= index < passages and index not in cited:
                cited.append(index)
    return cited


def _normal(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .:;,!?\"'`*-")


def choose_label(output: str, labels: Sequence[str]) -> tuple[str, ClassifyMatch]:
    """The label ``output`` names: the output is exactly a label (ignoring case, spaces,
    quotes and end punctuation); else the label it mentions first as a whole word (the
    longest at the same place); else the most similar label."""
    said = _normal(output)
    for label in labels:
        if _normal(label) == said:
            return label, "exact"
    mentions: list[tuple[int, int, str]] = []
    for label in labels:
        found = re.search(rf"(?<!\w){re.escape(_normal(label))}(?!\w)", said)
        if found:
            mentions.append((found.start(), -len(label), label))
    if mentions:
        return min(mentions)[2], "mentioned"
    scores = [(difflib.SequenceMatcher(None, said, _normal(label)).ratio(), -i)
              for i, label in enumerate(labels)]
    _, best = max(scores)
    return labels[-best], "closest"


def json_of(output: str) -> JsonValue:
    """The JSON value ``output`` holds: all of it, or inside a ``` fence, or the first
    object or array in it; OutputInvalid when it holds none."""
    text = output.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value: JsonValue = json.loads(text)
        return value
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    for start in (i for i, c in enumerate(text) if c in "{["):
        try:
            value, _ = decoder.raw_decode(text, start)
            return value
        except json.JSONDecodeError:
            continue
    shown = output if len(output) <= 200 else output[:200] + "..."
    raise OutputInvalid(f"the output is not JSON: {shown!r}")


SchemaNode = bool | Mapping[str, Any]  # what jsonschema's registry holds


def _no_retrieval(uri: str) -> Resource[SchemaNode]:
    # Schemas are the caller's: a reference to a URL must not have the worker fetch it
    # (submission refuses them already; this holds for any schema that got through).
    raise NoSuchResource(uri)


LOCAL_ONLY: Registry[SchemaNode] = Registry(retrieve=_no_retrieval)  # type: ignore[call-arg]


def structured(output: str, schema: dict[str, JsonValue]) -> JsonValue:
    """The JSON in ``output`` if it is valid against ``schema``; else OutputInvalid
    naming where and why (jsonschema's most relevant error)."""
    value = json_of(output)
    try:
        error = best_match(Draft202012Validator(schema, registry=LOCAL_ONLY)
                           .iter_errors(value))
    except Unresolvable as exc:
        raise OutputInvalid(f"the schema's reference {exc.ref!r} cannot be resolved") from None
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise OutputInvalid(f"the output does not match the schema at {where}: "
                            f"{error.message}")
    return value
