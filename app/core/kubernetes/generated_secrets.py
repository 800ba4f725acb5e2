"""Secrets generated once, in the cluster (`tasklane secrets ensure`, run by the chart's hook Job).

A value is generated only for a key the Secret lacks; a value that exists is never read back
into a manifest, changed or rotated. That is what lets `helm template` render the same bytes
every time (GitOps tools render that way) while a default install still needs no secret from
the user: the chart names the Secrets, this module fills them.

Values are alphanumeric: they are spliced into redis:// URLs and HTTP headers unescaped.
"""

from __future__ import annotations

import base64
import secrets
import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException

from app.core.kubernetes.calls import EXIT_API_ERROR, ApiCaller, ApiCallError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

ALPHABET = string.ascii_letters + string.digits
#: A create or patch that loses a race (another writer in between) is retried this often.
_ATTEMPTS = 3


def random_value(length: int) -> str:
    """A random alphanumeric string of `length` characters (secrets.choice: a CSPRNG)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretSpec:
    """One Secret to ensure: its name and, per key, the length of a generated value."""

    name: str
    keys: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnsureOutcome:
    """What ensuring one Secret did, for the command's output."""

    name: str
    namespace: str
    created: bool
    #: Keys that got a generated value now.
    added: tuple[str, ...]
    #: Keys that already had a value, left exactly as they were.
    kept: tuple[str, ...]
    #: Annotations added (existing ones are never changed either).
    annotated: tuple[str, ...] = ()

    def line(self) -> str:
        where = f"Secret {self.name} (namespace {self.namespace})"
        if self.created:
            return f"{where}: created with generated {', '.join(self.added)}."
        if not self.added and not self.annotated:
            return f"{where}: has {', '.join(self.kept)}; nothing changed."
        parts = []
        if self.added:
            parts.append(f"added generated {', '.join(self.added)}")
        if self.annotated:
            parts.append(f"annotated {', '.join(self.annotated)}")
        if self.kept:
            parts.append(f"kept {', '.join(self.kept)} as they were (never rotated)")
        return f"{where}: {'; '.join(parts)}."


class SecretEnsurer:
    """Creates missing Secrets and adds missing keys in one namespace, never changing a value."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        from kubernetes.client import CoreV1Api

        self.core = CoreV1Api(api_client)
        self.namespace = namespace
        self.labels = labels or {}
        self.annotations = annotations or {}
        self._call = ApiCaller(api_client.configuration.host, namespace, request_timeout)

    def ensure(self, spec: SecretSpec) -> EnsureOutcome:
        """Make `spec.name` hold every key of the spec. Raises ApiCallError."""
        for _ in range(_ATTEMPTS):
            try:
                return self._ensure_once(spec)
            except ApiException as exc:
                # 409: someone created or changed the Secret between our read and write (two
                # hook runs at once); read it again and add only what is still missing.
                if exc.status != 409:
                    raise
        raise ApiCallError(
            f"Secret {spec.name} in namespace {self.namespace} kept changing while it was "
            f"being filled ({_ATTEMPTS} conflicts); run the command again",
            EXIT_API_ERROR,
        )

    def _ensure_once(self, spec: SecretSpec) -> EnsureOutcome:
        current = self._read(spec.name)
        if current is None:
            generated = {key: random_value(length) for key, length in spec.keys.items()}
            self._call(
                "create secrets",
                self.core.create_namespaced_secret,
                self.namespace,
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {
                        "name": spec.name,
                        "labels": self.labels,
                        "annotations": self.annotations,
                    },
                    "type": "Opaque",
                    "data": _encoded(generated),
                },
                answered=(409,),
            )
            return EnsureOutcome(
                name=spec.name,
                namespace=self.namespace,
                created=True,
                added=tuple(spec.keys),
                kept=(),
                annotated=tuple(self.annotations),
            )
        data = current.get("data") or {}
        metadata = current.get("metadata") or {}
        present = metadata.get("annotations") or {}
        missing = {key: length for key, length in spec.keys.items() if key not in data}
        annotations = {key: value for key, value in self.annotations.items() if key not in present}
        if missing or annotations:
            # A merge patch of only the absent keys, guarded by the resourceVersion read above:
            # the API server answers 409 if the Secret changed since, and nothing is overwritten.
            patch: dict[str, Any] = {"metadata": {"resourceVersion": metadata["resourceVersion"]}}
            if annotations:
                patch["metadata"]["annotations"] = annotations
            if missing:
                patch["data"] = _encoded(
                    {key: random_value(length) for key, length in missing.items()}
                )
            self._call(
                "patch secrets",
                self.core.patch_namespaced_secret,
                spec.name,
                self.namespace,
                patch,
                answered=(409,),
            )
        return EnsureOutcome(
            name=spec.name,
            namespace=self.namespace,
            created=False,
            added=tuple(missing),
            kept=tuple(key for key in spec.keys if key in data),
            annotated=tuple(annotations),
        )

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            return self._call("get secrets", self.core.read_namespaced_secret, name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


def _encoded(values: dict[str, str]) -> dict[str, str]:
    return {key: base64.b64encode(value.encode()).decode() for key, value in values.items()}
