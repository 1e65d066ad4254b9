"""The hide-history-before-join rule, without I/O: the one rule every service applies."""

import pytest

from parley_core.errors import PermissionDenied
from parley_core.visibility import EVERYTHING, HistoryView


def test_a_channel_that_hides_history_shows_a_member_what_came_after_their_join() -> None:
    view = HistoryView.at_join(hides_history=True, newest_seq_at_join=5)
    assert view.first_seq == 6
    assert not view.shows(5)
    assert view.shows(6)
    with pytest.raises(PermissionDenied, match="#5 was sent before you joined"):
        view.require(5)
    view.require(6)


def test_a_channel_that_keeps_history_shows_everything() -> None:
    assert HistoryView.at_join(hides_history=False, newest_seq_at_join=5) == EVERYTHING
    assert HistoryView.at_join(hides_history=True, newest_seq_at_join=0) == EVERYTHING  # there from the start
    EVERYTHING.require(1)


@pytest.mark.parametrize(
    ("after_seq", "before_seq", "expected"),
    [
        (0, 0, 5),  # from the start: from the join on
        (7, 0, 7),  # later than the join: as asked
        (0, 9, 5),  # backwards from #9: #6..#8 only
        (0, 6, None),  # backwards from #6: all of it hidden
        (0, 2, None),
    ],
)
def test_a_history_page_is_clamped_to_what_the_member_may_read(
    after_seq: int, before_seq: int, expected: int | None
) -> None:
    view = HistoryView(first_seq=6)
    assert view.page_after(after_seq=after_seq, before_seq=before_seq) == expected


def test_a_live_stream_sees_no_event_before_the_join_nor_about_an_earlier_message() -> None:
    view = HistoryView.at_join(hides_history=True, newest_seq_at_join=5, joined_at=40)
    assert not view.shows_event(39, 0)  # a kick (and its reason) before the join
    assert view.shows_event(40, 0)  # the join itself
    assert not view.shows_event(41, 5)  # an edit or a reaction of message #5, after the join
    assert view.shows_event(42, 6)
    assert all(EVERYTHING.shows_event(position, seq) for position, seq in [(1, 0), (2, 1), (3, 7)])
    assert HistoryView.at_join(hides_history=False, newest_seq_at_join=5, joined_at=40) == EVERYTHING
