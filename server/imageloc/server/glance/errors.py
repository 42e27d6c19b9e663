"""A refusal as Glance answers it: the status of its ErrorInfo's httpStatus, and webob's body
in the shape the request's Accept asks for.

Imports aiohttp only; the status comes from the gRPC adapter's one mapping of refusals
(rpc/errors.py's http_status_of_refusal, docs/errors.md). The shapes are section 8.1 of
the captures of the real clients: each client breaks on the wrong one.
"""

from __future__ import annotations

import html
import http
import json

from aiohttp import web

#: webob's own explanation of a 403, which Glance puts before some details.
_FORBIDDEN_EXPLANATION = "Access was denied to this resource."
#: The reasons whose message Glance gives as a detail after webob's explanation.
_DETAILED = frozenset({"LAST_LOCATION"})


def error_response(
    code: int, message: str, *, accept: str, reason: str = "", headers: dict[str, str]
) -> web.Response:
    """webob's error page for code with message: HTML for */* or text/html, flat JSON for
    application/json, plain text for an empty or absent Accept or anything else."""
    title = http.HTTPStatus(code).phrase
    status_line = f"{code} {title}"
    explanation, detail = message, ""
    if reason in _DETAILED and code == 403:
        explanation, detail = _FORBIDDEN_EXPLANATION, message
    wanted = accept.lower()
    if "application/json" in wanted:
        body = json.dumps(
            {"message": f"{explanation}<br /><br />\n{detail}\n\n", "code": status_line,
             "title": title}
        )  # fmt: skip
        content_type = "application/json"
    elif "text/html" in wanted or "*/*" in wanted:
        text = f"{html.escape(explanation)}<br /><br />\n{html.escape(detail)}\n\n\n"
        body = (
            f"<html>\n <head>\n  <title>{status_line}</title>\n </head>\n <body>\n"
            f"  <h1>{status_line}</h1>\n  {text}\n </body>\n</html>"
        )
        content_type = "text/html"
    else:
        body = (
            f"{status_line}\n\n{explanation}\n\n{detail}   "
            if detail
            else (f"{status_line}\n\n{explanation}\n\n   ")
        )
        content_type = "text/plain"
    return web.Response(
        status=code, text=body, content_type=content_type, charset="UTF-8", headers=headers
    )
