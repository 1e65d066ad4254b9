"""run_service: what a service's own process does around serve() (synchronous: it runs its own loop)."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest

import parley_core.runner as runner


def test_a_service_process_leaves_its_start_up_heap_out_of_full_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_service freezes what start-up made once its server is ready (serve() alone, as the
    other tests here run it, does not: a test process serves many times). The server is left out
    here: what is checked is run_service's own step once serving."""

    async def ready_at_once(app: object, *, on_ready: Callable[[int], None], **_: object) -> int:
        on_ready(0)
        return 0

    monkeypatch.setattr(runner, "serve", ready_at_once)
    monkeypatch.setattr(runner, "configure_logging", lambda **_: None)
    assert gc.get_freeze_count() == 0
    try:
        with pytest.raises(SystemExit) as exited:
            runner.run_service(object, service="messaging")  # type: ignore[arg-type]
        assert exited.value.code == 0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
