"""One Kubernetes API call for the commands (`tasklane scale`, `tasklane secrets ensure`): raw
JSON back, and every failure an ApiCallError carrying the exit status the command returns.

The commands share one table of exit statuses, so a script reads a 4 as "RBAC" whichever
command it ran.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from app.core.kubernetes.client import api_message, innermost

#: The API refused the change for another reason (5xx, conflict, invalid).
EXIT_API_ERROR = 1
#: Bad arguments or no usable configuration (also argparse's status).
EXIT_USAGE = 2
#: The object the command acts on does not exist in the namespace.
EXIT_NOT_FOUND = 3
#: RBAC denied a read or the change (403).
EXIT_FORBIDDEN = 4
#: The API server cannot be reached (refused, timed out, DNS).
EXIT_UNREACHABLE = 5


class ApiCallError(Exception):
    """A command cannot do what was asked; `exit_code` says which failure it is."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ApiCaller:
    """Calls API methods in one namespace with one timeout, translating their failures."""

    def __init__(self, host: str, namespace: str, request_timeout: float) -> None:
        self.host = host
        self.namespace = namespace
        self.timeout = (request_timeout, request_timeout)

    def __call__(
        self,
        action: str,
        method: Any,
        *args: Any,
        answered: tuple[int, ...] = (404,),
        **params: Any,
    ) -> dict[str, Any]:
        """Run one API call ("verb resource" in `action`), raw JSON back. Statuses in
        `answered` (404: absent; 409 for a create: it exists meanwhile) stay ApiExceptions for
        the caller to judge; 403, other statuses and connection failures become
        ApiCallErrors."""
        try:
            response = method(
                *args, **params, _preload_content=False, _request_timeout=self.timeout
            )
            try:
                return json.loads(response.data or b"{}")
            finally:
                response.release_conn()
        except ApiException as exc:
            if exc.status in answered:
                raise
            verb, _, resource = action.partition(" ")
            if exc.status == 403:
                raise ApiCallError(
                    f"forbidden: your credentials may not {verb} {resource} in namespace "
                    f"{self.namespace} (RBAC: grant {verb!r} on {resource!r}): "
                    f"{api_message(exc.body)}",
                    EXIT_FORBIDDEN,
                ) from None
            raise ApiCallError(
                f"the Kubernetes API refused to {action}: HTTP {exc.status} "
                f"{api_message(exc.body) or exc.reason}",
                EXIT_API_ERROR,
            ) from None
        except (HTTPError, OSError) as exc:
            raise ApiCallError(
                f"cannot reach the Kubernetes API at {self.host}: {innermost(exc)}",
                EXIT_UNREACHABLE,
            ) from None
