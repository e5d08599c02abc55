"""`llmos tenant ...`: a tenant's operator settings (an operator's tool; the global
--tenant names the tenant): its scheduling policy (weight and quotas, docs/quotas.md)
and its content filters (docs/filters.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from llmos_jobs.cli.output import console, emit_json, err_console, table
from llmos_jobs.cli.state import client, current_tenant

if TYPE_CHECKING:
    from llmos_jobs.db.tenant_tables import TenantPolicyPublic

tenant_app = typer.Typer(help="Operator settings of a tenant (the global --tenant): its "
                              "weight and quotas, its content filters.",
                         no_args_is_help=True)
filters_app = typer.Typer(
    help="Content filters: input normalisation, PII redaction, block lists and regular "
         "expressions, a moderation model. A blocked job ends 'filtered'.",
    no_args_is_help=True)
tenant_app.add_typer(filters_app, name="filters")
_JSON = typer.Option(False, "--json", help="Print JSON for scripts.")
_SIDES = "in (the request), out (the output) or both"


def _side(value: str) -> str:
    if value not in ("in", "out", "both"):
        raise typer.BadParameter(f"{value!r}: use {_SIDES}")
    return value


def _read_rules(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold one JSON object (the tenant's rules)")
    return data


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def _print_policy(policies: list[TenantPolicyPublic]) -> None:
    grid = table("tenant", "weight", "max queued", "max running", "tokens/min",
                 "max priority", "updated")
    for p in policies:
        grid.add_row(p.tenant, f"{p.weight:g}", _limit(p.max_queued), _limit(p.max_running),
                     _limit(p.tokens_per_minute), _limit(p.max_priority),
                     p.updated_at.isoformat(timespec="seconds") if p.updated_at
                     else "never (default)")
    console.print(grid)


@tenant_app.command("set")
def set_policy(
    weight: float = typer.Option(None, "--weight", help="Its share of the workers against "
                                 "other backlogged tenants at one priority (default 1)."),
    max_queued: int = typer.Option(None, "--max-queued", help="Jobs queued or waiting at "
                                   "once, batches aside; more are refused (HTTP 429)."),
    max_running: int = typer.Option(None, "--max-running", help="Jobs running at once; the "
                                    "dispatcher holds the rest back."),
    tokens_per_minute: int = typer.Option(None, "--tokens-per-minute", help="Tokens charged "
                                          "per moving minute (request bytes/4 + max_tokens); "
                                          "more is refused, batches are paced."),
    max_priority: str = typer.Option(None, "--max-priority", help="The highest priority it "
                                     "may ask for: 0-9 (0 highest) or interactive, default, "
                                     "batch."),
    clear_weight: bool = typer.Option(False, "--clear-weight", help="Weight back to 1."),
    clear_max_queued: bool = typer.Option(False, "--clear-max-queued",
                                          help="No max_queued."),
    clear_max_running: bool = typer.Option(False, "--clear-max-running",
                                           help="No max_running."),
    clear_tokens_per_minute: bool = typer.Option(False, "--clear-tokens-per-minute",
                                                 help="No tokens_per_minute."),
    clear_max_priority: bool = typer.Option(False, "--clear-max-priority",
                                            help="No max_priority."),
    as_json: bool = _JSON,
) -> None:
    """Set the tenant's weight and quotas; what is not named keeps its value. A bad value
    is refused, naming it, and nothing changes. docs/quotas.md says what each limits."""
    given: dict[str, float | int | str | None] = {
        "weight": weight, "max_queued": max_queued, "max_running": max_running,
        "tokens_per_minute": tokens_per_minute, "max_priority": max_priority}
    cleared = {"weight": clear_weight, "max_queued": clear_max_queued,
               "max_running": clear_max_running, "tokens_per_minute": clear_tokens_per_minute,
               "max_priority": clear_max_priority}
    both = [name for name, value in given.items() if value is not None and cleared[name]]
    if both:
        raise typer.BadParameter(f"--{both[0].replace('_', '-')} and "
                                 f"--clear-{both[0].replace('_', '-')} contradict each other")
    changes: dict[str, float | int | str | None] = {
        name: value for name, value in given.items() if value is not None}
    changes.update({name: None for name, clear in cleared.items() if clear})
    if not changes:
        raise typer.BadParameter("name something to set: --weight, --max-queued, "
                                 "--max-running, --tokens-per-minute, --max-priority or a "
                                 "--clear-... option")
    policy = client().set_policy(**changes)
    if as_json:
        emit_json(policy)
        return
    _print_policy([policy])


@tenant_app.command("show")
def show_policy(as_json: bool = _JSON) -> None:
    """The tenant's weight and quotas ('-': no limit; the default when never set)."""
    policy = client().policy()
    if as_json:
        emit_json(policy)
        return
    _print_policy([policy])


@tenant_app.command("list")
def list_policies(as_json: bool = _JSON) -> None:
    """Every tenant that has a policy (the others have weight 1 and no quota)."""
    policies = client().policies()
    if as_json:
        emit_json(policies)
        return
    _print_policy(policies)


@tenant_app.command("reset")
def reset_policy(as_json: bool = _JSON) -> None:
    """Remove the tenant's policy: weight 1 and no quota again."""
    policy = client().delete_policy()
    if as_json:
        emit_json(policy)
        return
    err_console.print(f"tenant {current_tenant()!r}: weight 1, no quota", markup=False)


@filters_app.command("set")
def set_filters(
    file: str = typer.Option(None, "--file", help="Replace every rule with this JSON file "
                             "(schemas/json/tenant_filters.json; '-' reads stdin)."),
    clear: bool = typer.Option(False, "--clear",
                               help="Start from the defaults, not from the current rules."),
    normalize: bool = typer.Option(None, "--normalize/--no-normalize",
                                   help="Normalise inputs (NFC, control characters, "
                                        "whitespace); on by default."),
    pii: list[str] = typer.Option([], "--pii", help="Add a built-in redaction rule: email, "
                                  "phone or card (Luhn-checked). Repeatable."),
    pii_side: str = typer.Option("both", "--pii-side", callback=_side,
                                 help=f"Where --pii rules apply: {_SIDES}."),
    block: str = typer.Option(None, "--block", help="Add (or replace) a block rule of "
                              "this name, with --word and/or --regex."),
    words: list[str] = typer.Option([], "--word", help="A blocked word or phrase (whole "
                                    "words, any case). Repeatable."),
    regex: str = typer.Option(None, "--regex", help="A blocked regular expression."),
    block_side: str = typer.Option("both", "--block-side", callback=_side,
                                   help=f"Where the --block rule applies: {_SIDES}."),
    moderation_model: str = typer.Option(None, "--moderation-model",
                                         help="A registered model run on each text as a "
                                              "classifier."),
    block_when: str = typer.Option(None, "--block-when", help="Block when the moderation "
                                   "model's output matches this regular expression."),
    moderation_side: str = typer.Option("in", "--moderation-side", callback=_side,
                                        help=f"Where the moderation step runs: {_SIDES}."),
    as_json: bool = _JSON,
) -> None:
    """Set the tenant's content filters: from a file, or by adding rules to the current
    ones. Invalid rules are refused whole, naming what is wrong."""
    from llmos_jobs.services.filters import with_pii
    from schemas.filters import Direction, TenantFilters

    llmos = client()
    base = _read_rules(file) if file else (
        {} if clear else llmos.filters().model_dump(mode="json"))
    if pii:
        try:
            base = with_pii(TenantFilters.model_validate(base), pii, Direction(pii_side))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    if normalize is not None:
        base["normalize"] = normalize
    if block is not None:
        rule: dict[str, Any] = {"name": block, "words": words, "direction": block_side}
        if regex is not None:
            rule["pattern"] = regex
        base["block"] = [r for r in base.get("block", []) if r.get("name") != block] + [rule]
    elif words or regex:
        raise typer.BadParameter("--word and --regex belong to a block rule: name it "
                                 "with --block NAME")
    if moderation_model is not None or block_when is not None:
        if moderation_model is None or block_when is None:
            raise typer.BadParameter("the moderation step needs both --moderation-model "
                                     "and --block-when")
        base["moderation"] = {"name": "moderation", "model": moderation_model,
                              "block_when": block_when, "direction": moderation_side}
    saved = llmos.set_filters(base)
    if as_json:
        emit_json(saved)
        return
    err_console.print(f"content filters of tenant {current_tenant()!r} set: "
                      f"{len(saved.redact)} redaction, {len(saved.block)} block rule(s), "
                      f"moderation {'on' if saved.moderation else 'off'}", markup=False)


@filters_app.command("show")
def show(as_json: bool = _JSON) -> None:
    """The tenant's content filters (the defaults when none were set)."""
    filters = client().filters()
    if as_json:
        emit_json(filters)
        return
    console.print(f"normalise inputs: {'yes' if filters.normalize else 'no'}", markup=False)
    grid = table("name", "kind", "side", "matches", "action")
    for r in filters.redact:
        check = " (Luhn)" if r.luhn else ""
        grid.add_row(r.name, "redact", r.direction.value, r.pattern + check,
                     f"→ {r.replacement}")
    for b in filters.block:
        matches = ", ".join([*b.words[:5], *(["…"] if len(b.words) > 5 else [])])
        if b.pattern is not None:
            matches = f"{matches}; /{b.pattern}/" if matches else f"/{b.pattern}/"
        grid.add_row(b.name, "block", b.direction.value, matches, "filtered")
    if filters.moderation is not None:
        m = filters.moderation
        grid.add_row(m.name, f"moderation ({m.model})", m.direction.value,
                     f"/{m.block_when}/", "filtered")
    console.print(grid)


@filters_app.command("test")
def test(
    text: str = typer.Argument(..., help="The text to try ('-' reads stdin)."),
    side: str = typer.Option("in", "--side", callback=_side,
                             help="Screen it as a request (in) or as an output (out)."),
    as_json: bool = _JSON,
) -> None:
    """What the tenant's rules make of a text, without running a job (the moderation
    step, which needs a worker, is left out). Exit status 3 when a rule blocks it."""
    verdict = client().try_filters(sys.stdin.read() if text == "-" else text,
                                   side="out" if side == "out" else "in")
    if as_json:
        emit_json(verdict)
    elif verdict.blocked_by is not None:
        console.print(f"blocked by rule {verdict.blocked_by!r}", markup=False)
    else:
        console.print(verdict.text, markup=False)
        if verdict.redacted_by:
            err_console.print(f"redacted by: {', '.join(verdict.redacted_by)}", markup=False)
    if verdict.blocked_by is not None:
        raise typer.Exit(3)
