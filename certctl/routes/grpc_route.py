"""GRPCRoute method matches as the route model's paths: a gRPC call is a POST to
`/<service>/<method>` (gRPC over HTTP/2's `:path`).

Exact service and method: that path, Exact. Service only: the path prefix
`/<service>/`. Method only, or a RegularExpression (Python's `re`, which reads
the RE2 the spec names the same for the usual patterns): a pattern over the whole
path, case-sensitive (gRPC names are), an unset part matching any one element.
No method match: every path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from certctl.api import gateway as gw

_ANY_ELEMENT = "[^/]+"


@dataclass(frozen=True, kw_only=True)
class MethodPath:
    """Where a method match puts its route: `path` (Exact with `exact`), or `pattern`
    (whose source is also the `path`, as the route table keys regular expressions)."""

    path: str
    exact: bool = False
    pattern: re.Pattern[str] | None = None


def method_path(match: gw.GRPCMethodMatch | None) -> MethodPath:
    if match is None:
        return MethodPath(path="/")
    if match.type == "Exact":
        if match.service is not None and match.method is not None:
            return MethodPath(path=f"/{match.service}/{match.method}", exact=True)
        if match.method is None:
            return MethodPath(path=f"/{match.service}/")
        return _pattern(_ANY_ELEMENT, re.escape(match.method))
    return _pattern(f"(?:{match.service})" if match.service is not None else _ANY_ELEMENT,
                    f"(?:{match.method})" if match.method is not None else _ANY_ELEMENT)


def _pattern(service: str, method: str) -> MethodPath:
    pattern = re.compile(f"/{service}/{method}\\Z")
    return MethodPath(path=pattern.pattern, pattern=pattern)
