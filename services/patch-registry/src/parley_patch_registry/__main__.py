from parley_core.runner import run_service
from parley_patch_registry.service import PatchRegistryApp


def main() -> None:
    run_service(PatchRegistryApp, service="patch-registry")


if __name__ == "__main__":
    main()
