"""Model versions: registering content as a new version, resolving ``NAME[@N]`` to the
version a job records, and moving a name's current version (one compare-and-set)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import update
from sqlmodel import Session, col, select

from llmos_jobs.db.model_tables import ModelVersion, ModelVersionPublic
from llmos_jobs.db.tables import RegisteredModel
from llmos_jobs.errors import InvalidRequest, NotFound
from schemas.model import split_model_ref


@dataclass(frozen=True)
class ModelRef:
    """A model version: what a job records and what a worker loads."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Registration:
    model: RegisteredModel
    version: ModelVersion
    new: bool  # False: the current version already had this content


# Session.info key: the transaction, and the names resolve(hold=True) locked in it.
_HELD = "llmos.versions.held"


def register_version(*, session: Session, name: str, path: str, engine: str,
                     context_length: int, content_hash: str, size_bytes: int,
                     keep_alive: str | None, make_current: bool = True) -> Registration:
    """Version 1 of a new name; or version N+1 of a known one, made current (unless
    ``make_current`` is False: a deployed model's rollout moves it). The
    content of the current version again changes nothing (but ``keep_alive``); that
    of an older version is refused: going back is a deliberate act (pin NAME@N)."""
    model = session.get(RegisteredModel, name, with_for_update=True)
    versions = list_version_rows(session=session, name=name) if model is not None else []
    for known in versions:
        if known.content_hash != content_hash:
            continue
        assert model is not None
        if known.version == model.current_version:
            if keep_alive is not None and keep_alive != model.keep_alive:
                model.keep_alive = keep_alive
                session.add(model)
                session.flush()
            return Registration(model, known, new=False)
        raise InvalidRequest(
            f"{path} has the content of {name}@{known.version}, an older version (current: "
            f"{name}@{model.current_version}); pin it with {name}@{known.version}, or "
            "register changed content")
    number = max((v.version for v in versions), default=0) + 1
    row = ModelVersion(name=name, version=number, path=path, engine=engine,
                       context_length=context_length, content_hash=content_hash,
                       size_bytes=size_bytes)
    if model is None:
        model = RegisteredModel(name=name, path=path, engine=engine,
                                context_length=context_length, keep_alive=keep_alive,
                                current_version=number)
        session.add(model)
        session.flush()
        session.add(row)
        session.flush()
        return Registration(model, row, new=True)
    session.add(row)
    session.flush()
    if make_current and not set_current_version(session=session, name=name, version=number,
                               expect=model.current_version):
        raise InvalidRequest(f"{name}'s current version moved while registering; try again")
    if keep_alive is not None:
        model.keep_alive = keep_alive
        session.add(model)
    session.flush()
    session.refresh(model)
    return Registration(model, row, new=True)


def set_current_version(*, session: Session, name: str, version: int, expect: int) -> bool:
    """Make ``version`` the one NAME serves, if NAME still serves ``expect``: one
    statement, so that a rollout switches every later submission at once. The name's
    path, engine and context become the version's."""
    chosen = select(ModelVersion).where(ModelVersion.name == name,
                                        ModelVersion.version == version).subquery()
    statement = (
        update(RegisteredModel)
        .where(col(RegisteredModel.name) == name,
               col(RegisteredModel.current_version) == expect)
        .values(current_version=version,
                path=select(chosen.c.path).scalar_subquery(),
                engine=select(chosen.c.engine).scalar_subquery(),
                context_length=select(chosen.c.context_length).scalar_subquery())
    )
    return bool(session.execute(statement).rowcount)  # type: ignore[attr-defined]


def list_version_rows(*, session: Session, name: str) -> list[ModelVersion]:
    query = select(ModelVersion).where(ModelVersion.name == name)
    return list(session.exec(query.order_by(col(ModelVersion.version))))


def list_versions(*, session: Session, name: str) -> list[ModelVersionPublic]:
    model = session.get(RegisteredModel, name)
    if model is None:
        raise NotFound(f"model {name!r} is not registered")
    return [ModelVersionPublic(**v.model_dump(), current=v.version == model.current_version)
            for v in list_version_rows(session=session, name=name)]


def get_version(*, session: Session, ref: ModelRef) -> ModelVersion:
    row = session.get(ModelVersion, (ref.name, ref.version))
    if row is None:
        raise NotFound(f"model {ref} is not registered")
    return row


def _held_in_transaction(session: Session) -> set[str]:
    """The names ``resolve`` share-locked in the session's current transaction (a batch
    of jobs locks its model once, then reads it from the identity map)."""
    transaction = session.get_transaction()
    marker = session.info.get(_HELD)
    if marker is None or marker[0] is not transaction:
        marker = session.info[_HELD] = (transaction, set())
    held: set[str] = marker[1]
    return held


def resolve(*, session: Session, model: str, hold: bool = False) -> ModelVersion:
    """The version ``NAME`` (its current one) or ``NAME@N`` names; InvalidRequest
    naming what exists when it does not.

    ``hold``: the name's row stays share-locked (PostgreSQL; SQLite serialises writers
    anyway) until the transaction ends, so a switch of its current version
    (``set_current_version``) waits for the jobs resolved to the old one to commit,
    and whatever reads after the switch, in the switching transaction or later, sees
    them. Without it a job could commit for the old version after a rollout found that
    version's queue empty and let its last replica go."""
    try:
        name, pinned = split_model_ref(model)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    lock = hold and pinned is None and name not in _held_in_transaction(session)
    row = session.get(RegisteredModel, name, with_for_update={"read": True} if lock else None)
    if lock and row is not None:
        _held_in_transaction(session).add(name)
    if row is None:
        known = ", ".join(session.exec(select(RegisteredModel.name).order_by(
            col(RegisteredModel.name)))) or "none registered yet"
        raise InvalidRequest(f"model {name!r} is not registered (registered: {known})")
    version = session.get(ModelVersion, (name, row.current_version if pinned is None
                                         else pinned))
    if version is None:
        numbers = [str(v.version) for v in list_version_rows(session=session, name=name)]
        raise InvalidRequest(f"model {name!r} has no version {pinned} (versions: "
                             f"{', '.join(numbers) or 'none'}; current: "
                             f"{row.current_version})")
    return version
