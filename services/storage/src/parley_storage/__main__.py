from parley_core.runner import run_service
from parley_storage.service import StorageApp


def main() -> None:
    run_service(StorageApp, service="storage")


if __name__ == "__main__":
    main()
