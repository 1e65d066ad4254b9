"""The ranges every request's numbers and times must lie in, without I/O."""

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from parley.gateway.v1 import gateway_pb2
from parley.messaging.v1 import messaging_pb2
from parley.storage.v1 import storage_pb2

from parley_core.errors import InvalidArgument
from parley_core.ranges import MAX_NUMBER, check_ranges

YEAR_9999 = 253402300799


def test_numbers_and_times_in_range_pass() -> None:
    check_ranges(storage_pb2.GetChannelHistoryRequest(channel_id="c", after_seq=MAX_NUMBER, before_seq=1))
    check_ranges(storage_pb2.GetChannelHistoryRequest(after_time=Timestamp(seconds=0, nanos=999_999_999)))
    check_ranges(storage_pb2.GetChannelHistoryRequest(before_time=Timestamp(seconds=9_223_372_035)))
    check_ranges(storage_pb2.GetChannelHistoryRequest())  # unset fields are not looked at


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (storage_pb2.GetChannelHistoryRequest(after_seq=MAX_NUMBER + 1), "after_seq"),
        (storage_pb2.GetChannelHistoryRequest(before_seq=2**64 - 1), "before_seq"),
        (storage_pb2.QueryAuditRequest(since_ns=-1), "since_ns"),
        (storage_pb2.GetChannelHistoryRequest(after_time=Timestamp(seconds=YEAR_9999)), "after_time"),
        (storage_pb2.GetChannelHistoryRequest(before_time=Timestamp(seconds=-1)), "before_time"),
        (storage_pb2.GetChannelHistoryRequest(before_time=Timestamp(nanos=-1)), "before_time"),
        (storage_pb2.GetChannelHistoryRequest(before_time=Timestamp(nanos=1_000_000_000)), "before_time"),
        # Nested and repeated: the path says which one.
        (
            gateway_pb2.SubscribeRequest(
                resume=[gateway_pb2.ResumeFrom(), gateway_pb2.ResumeFrom(after_position=2**63)]
            ),
            "resume[1].after_position",
        ),
        # A batch's items are checked item by item, down to each one's request.
        (
            messaging_pb2.PostMessagesRequest(
                items=[
                    messaging_pb2.PostItem(request=messaging_pb2.PostMessageRequest(thread_root_seq=1)),
                    messaging_pb2.PostItem(request=messaging_pb2.PostMessageRequest(thread_root_seq=2**63)),
                ]
            ),
            "items[1].request.thread_root_seq",
        ),
    ],
)
def test_a_number_or_time_out_of_range_names_its_field(request_: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_ranges(request_)  # type: ignore[arg-type]
    assert str(refused.value).startswith(f"{field} must be")
