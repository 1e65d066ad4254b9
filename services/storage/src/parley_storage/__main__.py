"""Parley's storage service."""

import logging
import sys

from parley_core.runner import run_service
from parley_storage.migrate import SchemaNewerThanCode, UnversionedDatabase
from parley_storage.service import StorageApp

# Exit code for a configuration the service must not run with (sysexits EX_CONFIG).
EX_CONFIG = 78


def main() -> None:
    try:
        run_service(StorageApp, service="storage")
    except (SchemaNewerThanCode, UnversionedDatabase) as exc:
        logging.getLogger("parley_storage").error("refusing to start: %s", exc)
        print(f"parley-storage: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


if __name__ == "__main__":
    main()
