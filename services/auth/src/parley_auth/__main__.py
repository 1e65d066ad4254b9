from parley_auth.service import AuthApp
from parley_core.runner import run_service


def main() -> None:
    run_service(AuthApp, service="auth")


if __name__ == "__main__":
    main()
