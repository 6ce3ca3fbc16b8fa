"""Pre-flight reachability of the endpoints a job uses, reported in its estimate.

One short ``GET {base_url}/models`` per endpoint, with the endpoint's key, no redirects and a
2-second deadline. The answer is told in a few fixed words ("connection refused", "HTTP 401",
...) and never quotes what the endpoint sent. The managed local model is started on demand,
so it is reported reachable without a probe.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request

from prompttune.contract import EndpointCheck
from prompttune.search import ModelEndpoint

PROBE_SECONDS = 2.0
# Answers that mean calls will fail: a refused key, or a server that is down behind a proxy.
_FAILING_STATUS = frozenset({401, 403, 407, 500, 502, 503, 504})


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def check_endpoint(endpoint: ModelEndpoint, field: str) -> EndpointCheck:
    """Whether `endpoint` answers; blocking (call it off the event loop)."""
    name = endpoint.name or "caller"
    if not endpoint.base_url:
        return EndpointCheck(endpoint=name, field=field, reachable=True)
    error = _probe(endpoint)
    return EndpointCheck(endpoint=name, field=field, reachable=not error, error=error)


def _probe(endpoint: ModelEndpoint) -> str:
    request = urllib.request.Request(endpoint.base_url.rstrip("/") + "/models")
    key = os.environ.get(endpoint.api_key_env, "") if endpoint.api_key_env else ""
    if key:
        request.add_unredirected_header("Authorization", f"Bearer {key}")
    try:
        with _OPENER.open(request, timeout=PROBE_SECONDS):
            return ""
    except urllib.error.HTTPError as error:
        # Any other answer (404 or 501 for a server without a model list, say) is reachable.
        return f"HTTP {error.code}" if error.code in _FAILING_STATUS else ""
    except urllib.error.URLError as error:
        return _reason(error.reason)
    except TimeoutError:
        return "timed out"
    except (OSError, ValueError):
        return "unreachable"


def _reason(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return "host name does not resolve"
    return "unreachable"
