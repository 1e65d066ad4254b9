"""Data residency: an organisation's archive is bound to one configured location (database URL).

Two checks, so data never lands anywhere else: at start the configured database must be the
organisation's bound location (PARLEY_STORAGE_ORGANISATION + PARLEY_STORAGE_BOUND_DATABASE_URL),
and the database itself remembers, from its first start, which organisation and location it
belongs to, so a copy opened elsewhere or a service configured for another organisation is
refused before it writes anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import URL, Connection, insert, make_url, select

from parley_core.database import with_driver
from parley_storage.schema import residency
from parley_storage.settings import StorageSettings


class ResidencyViolation(Exception):
    """Writing here would put an organisation's data outside its bound location."""


@dataclass(frozen=True)
class ResidencyBinding:
    organisation: str
    location: str

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> ResidencyBinding | None:
        if not settings.organisation and not settings.bound_database_url:
            return None
        if not (settings.organisation and settings.bound_database_url):
            raise ResidencyViolation(
                "set both PARLEY_STORAGE_ORGANISATION and PARLEY_STORAGE_BOUND_DATABASE_URL, or neither"
            )
        return cls(settings.organisation, location_of(settings.bound_database_url))


def location_of(url: str) -> str:
    """A database URL without its password: the location, not the credential (`postgresql://`
    with the driver the platform uses, as storage opens it)."""
    parsed = make_url(with_driver(url))
    bare = URL.create(
        parsed.drivername,
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=parsed.query,
    )
    return bare.render_as_string(hide_password=False)


def check_configured(binding: ResidencyBinding | None, database_url: str) -> None:
    if binding is not None and location_of(database_url) != binding.location:
        raise ResidencyViolation(
            f"organisation {binding.organisation!r} is bound to {binding.location}; "
            f"refusing to write its data to {location_of(database_url)}"
        )


def enforce_in_database(conn: Connection, binding: ResidencyBinding | None, database_url: str) -> None:
    """Record the binding on first start; afterwards refuse another location or organisation."""
    check_configured(binding, database_url)
    here = location_of(database_url)
    recorded = conn.execute(select(residency)).first()
    if recorded is None:
        if binding is not None:
            conn.execute(
                insert(residency).values(
                    organisation=binding.organisation, location=binding.location, bound_at_ns=time.time_ns()
                )
            )
        return
    if recorded.location != here:
        raise ResidencyViolation(
            f"this database belongs to {recorded.organisation!r} at {recorded.location}, "
            f"but is being opened at {here}; refusing to write it elsewhere"
        )
    if binding is not None and binding.organisation != recorded.organisation:
        raise ResidencyViolation(
            f"this database belongs to organisation {recorded.organisation!r}, not {binding.organisation!r}"
        )


def rebind_restored(conn: Connection, binding: ResidencyBinding | None, database_url: str) -> None:
    """After a restore: the data may move only to its own organisation's configured location."""
    check_configured(binding, database_url)
    recorded = conn.execute(select(residency)).first()
    if recorded is not None:
        if binding is None:
            raise ResidencyViolation(
                f"the backup belongs to organisation {recorded.organisation!r}; set PARLEY_STORAGE_ORGANISATION "
                "and PARLEY_STORAGE_BOUND_DATABASE_URL to the location it may be restored to"
            )
        if binding.organisation != recorded.organisation:
            raise ResidencyViolation(
                f"the backup belongs to organisation {recorded.organisation!r}, not {binding.organisation!r}"
            )
        conn.execute(residency.delete())
    enforce_in_database(conn, binding, database_url)
