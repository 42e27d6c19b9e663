"""Domain values to messages: timestamps keep every microsecond, before 1970 too."""

from __future__ import annotations

import datetime

import pytest
from google.protobuf import timestamp_pb2

from imageloc.server.domain.model import Image, ImageStatus
from imageloc.server.rpc import convert

UTC = datetime.UTC


@pytest.mark.parametrize(
    "moment",
    [
        datetime.datetime(2026, 11, 24, 20, 41, 4, 123456, tzinfo=UTC),
        datetime.datetime(1970, 1, 1, tzinfo=UTC),
        datetime.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime.datetime(1, 1, 1, tzinfo=UTC),
        datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_image_times_are_the_timestamps_protobuf_would_make(moment: datetime.datetime) -> None:
    image = Image(
        id="00000000-0000-4000-8000-000000000001",
        name="t",
        status=ImageStatus.QUEUED,
        created_at=moment,
        updated_at=moment,
    )
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment)
    message = convert.image_to_proto(image)
    assert message.create_time == expected
    assert message.update_time.ToDatetime(tzinfo=UTC) == moment
