"""docs/errors.md stays true: every reason, with the code and HTTP status the server sends."""

from __future__ import annotations

import pathlib
import re

from google.rpc import code_pb2

from imageloc.server.domain.errors import Reason
from imageloc.server.rpc.errors import ACTION_HTTP_STATUS, REASON_CODES

ERRORS_DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "errors.md"
ROW = re.compile(r"^\|[^|]+\| ([A-Z_]+) \| ([A-Z_]+) \| (\d{3}) \|$")


def documented_rows() -> set[tuple[str, str, int]]:
    rows = set()
    for line in ERRORS_DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows.add((match[2], match[1], int(match[3])))
    return rows


def test_every_reason_is_documented_with_its_code_and_http_status() -> None:
    rows = documented_rows()
    for reason, (code, http_status) in REASON_CODES.items():
        statuses = {http_status} | {s for (r, _), s in ACTION_HTTP_STATUS.items() if r is reason}
        for status in statuses:
            assert (str(reason), code_pb2.Code.Name(code), status) in rows


def test_no_documented_row_contradicts_the_server() -> None:
    for reason, code, http_status in documented_rows():
        if reason not in Reason.__members__:
            continue
        expected_code, default_status = REASON_CODES[Reason(reason)]
        assert code == code_pb2.Code.Name(expected_code)
        allowed = {default_status} | {
            status for (r, _), status in ACTION_HTTP_STATUS.items() if r == reason
        }
        assert http_status in allowed
