"""The api's log lines about the worker pool as Kubernetes reports it: one line per change an
operator would want to see (a scale, a pause, scale-from-zero turning on or off), and each kind
of failure logged once until it clears, not once per retry."""

from __future__ import annotations

import logging

from app.core.kubernetes.state import KubeView

log = logging.getLogger("tasklane.kubernetes")

DEPLOYMENT = "Deployment"
SCALED_OBJECT = "ScaledObject"


def log_change(label: str, name: str, before: KubeView, after: KubeView, flag: bool) -> None:
    """Log what changed between two views after an update of object kind `label`."""
    if label == SCALED_OBJECT:
        old_error, new_error = before.scaled_object_error, after.scaled_object_error
        old = (before.scaled_object_known, before.scaled_object, before.keda_installed)
        new = (after.scaled_object_known, after.scaled_object, after.keda_installed)
    else:
        old_error, new_error = before.deployment_error, after.deployment_error
        old = (before.deployment_known, before.deployment)
        new = (after.deployment_known, after.deployment)
    if new_error is not None and category(new_error) != category(old_error):
        log.warning(
            "cannot read %s %s: %s; routing uses heartbeats and TASKLANE_SCALE_FROM_ZERO "
            "until it answers (retrying with backoff)",
            label,
            name,
            new_error,
        )
    elif new_error is None and old_error is not None:
        log.info("reading %s %s again", label, name)
    if new != old and new[0]:
        _log_state(label, name, before, after)
    _log_verdicts(before, after, flag)


def _log_state(label: str, name: str, before: KubeView, after: KubeView) -> None:
    if label == DEPLOYMENT:
        dep = after.deployment
        if dep is None:
            log.warning(
                "Deployment %s not found in namespace %s (check TASKLANE_WORKER_DEPLOYMENT and "
                "TASKLANE_NAMESPACE); routing uses heartbeats",
                name,
                after.namespace,
            )
        else:
            log.info(
                "Deployment %s: replicas=%d (running %d, ready %d)",
                name,
                dep.replicas,
                dep.current_replicas,
                dep.ready_replicas,
            )
    elif after.keda_installed is False:
        if before.keda_installed is not False:
            log.info("KEDA ScaledObjects are not served in this cluster: no autoscaler")
    else:
        so = after.scaled_object
        if so is None:
            log.info("no ScaledObject targets Deployment %s", after.deployment_name)
        else:
            details = ", ".join(f"{key}={value}" for key, value in so.as_dict().items())
            log.info("ScaledObject %s: %s", so.name, details)


def _log_verdicts(before: KubeView, after: KubeView, flag: bool) -> None:
    held_before, held_after = before.held_at_zero(flag), after.held_at_zero(flag)
    if held_after and not held_before:
        log.warning(
            "worker pool %s is held at zero replicas: heavy tasks run in-process "
            "(no_workers) until it is scaled up",
            after.deployment_name,
        )
    elif held_before and not held_after:
        log.info("worker pool %s is no longer held at zero", after.deployment_name)
    sfz_before, sfz_after = before.scale_from_zero(), after.scale_from_zero()
    if sfz_after is not None and sfz_after != sfz_before:
        so = after.own_scaled_object
        if after.keda_installed is False:
            why = "KEDA is not installed"
        elif so is None:
            why = f"no ScaledObject targets Deployment {after.deployment_name}"
        elif not so.autoscaling:
            why = f"ScaledObject {so.name} is paused"
        else:
            why = f"ScaledObject {so.name} has minReplicaCount {so.min_replicas}"
        log.info("scale-from-zero %s: %s", "on" if sfz_after else "off", why)


def category(error: str | None) -> str | None:
    """Failures of one kind share a prefix ('forbidden (403)', 'API server unreachable')."""
    return None if error is None else error.split(":", 1)[0]
