from parley_core.runner import run_service
from parley_messaging.service import MessagingApp


def main() -> None:
    run_service(MessagingApp, service="messaging")


if __name__ == "__main__":
    main()
