"""`parley up`'s restart budget for a crashing service: spent by crashes in a row, renewed by a
long enough run (the red team found it never reset)."""

from __future__ import annotations

from parley_cli.restart_budget import RESTART_LIMIT, RESTART_RESET_AFTER_S, RestartBudget


def test_crashes_in_a_row_spend_the_budget_and_a_long_run_renews_it() -> None:
    budget = RestartBudget()
    assert all(budget.take("gateway", now=float(i)) for i in range(RESTART_LIMIT))
    assert not budget.take("gateway", now=float(RESTART_LIMIT))  # crashing in a loop: left down
    assert budget.take("auth", now=0.0)  # each service its own budget

    renewed = RestartBudget()
    for i in range(RESTART_LIMIT):
        assert renewed.take("gateway", now=i * RESTART_RESET_AFTER_S)  # each crash after a long healthy run
    assert renewed.take("gateway", now=RESTART_LIMIT * RESTART_RESET_AFTER_S)
    assert renewed.used["gateway"] == 1
