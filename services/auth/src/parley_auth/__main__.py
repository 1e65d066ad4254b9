from parley_core.runner import run_service

from parley_auth.service import AuthApp


def main() -> None:
    run_service(AuthApp, service="auth")


if __name__ == "__main__":
    main()
