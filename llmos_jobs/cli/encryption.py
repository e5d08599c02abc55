"""`llmos encryption ...`: keys of the encryption at rest."""

from __future__ import annotations

import typer

from llmos_jobs.cli.output import console, emit_json

encryption_app = typer.Typer(help="Keys of the encryption at rest.", no_args_is_help=True)


@encryption_app.command("new-key")
def new_key() -> None:
    """Print a new key. Put it first in LLMOS_ENCRYPTION_KEYS (keep the old ones after
    it), restart, then run `llmos encryption rotate`."""
    from cryptography.fernet import Fernet

    print(Fernet.generate_key().decode())


@encryption_app.command("rotate")
def rotate(as_json: bool = typer.Option(False, "--json")) -> None:
    """Re-encrypt everything stored under the newest key; older keys can then go."""
    from llmos_jobs.cli.state import database
    from llmos_jobs.db.rotation import rotate_all
    from llmos_jobs.db.session import session_scope

    db = database()
    with console.status("re-encrypting"), session_scope(db) as session:
        counts = rotate_all(session=session)
    if as_json:
        emit_json(counts)
    else:
        for column, n in counts.items():
            console.print(f"{column}: {n} re-encrypted")
