from parley_core.runner import run_service
from parley_gateway.service import GatewayApp


def main() -> None:
    run_service(GatewayApp, service="gateway", client_facing=True)


if __name__ == "__main__":
    main()
