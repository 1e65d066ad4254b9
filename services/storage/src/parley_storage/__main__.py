"""Parley's storage service."""

import logging

from parley_core.config import Settings
from parley_core.logs import configure_logging
from parley_core.runner import EX_CONFIG, run_service
from parley_storage.archive import open_engine
from parley_storage.migrate import SchemaNewerThanCode, UnversionedDatabase, check_schema_compatible
from parley_storage.residency import ResidencyViolation
from parley_storage.restored import RestoredArchiveOnly, refuse_restored
from parley_storage.service import StorageApp, check_residency, database_url


def main() -> None:
    # Checked before connecting to anything: an older build must not touch a newer schema.
    settings = Settings(service="storage")
    url = database_url(settings)
    engine = open_engine(url)
    try:
        refuse_restored(settings.data_dir)
        check_schema_compatible(engine)
        check_residency(url, engine)
    except (SchemaNewerThanCode, UnversionedDatabase, ResidencyViolation, RestoredArchiveOnly) as exc:
        # One line: a JSON record on stderr like every other line of the service's log (the node
        # agent writes stderr to logs/storage.log). Logging is not set up yet; run_service would.
        configure_logging(service="storage", instance_id=settings.instance_id, level=settings.log_level)
        logging.getLogger("parley_storage").error("refusing to start: %s", exc)
        raise SystemExit(EX_CONFIG) from None
    finally:
        engine.dispose()
    run_service(StorageApp, service="storage")


if __name__ == "__main__":
    main()
