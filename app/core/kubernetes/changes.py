"""The api's log lines about the worker pool as Kubernetes reports it: one line per change an
operator would want to see (a scale, a pause, scale-from-zero turning on or off), and each kind
of failure logged once until it clears, not once per retry."""

from __future__ import annotations

import logging

from app.core.kubernetes.state import KubeView, PoolView

log = logging.getLogger("tasklane.kubernetes")

DEPLOYMENT = "Deployment"
SCALED_OBJECT = "ScaledObject"


def log_change(label: str, name: str, before: KubeView, after: KubeView, flag: bool) -> None:
    """Log what changed between two views after an update of object kind `label`."""
    if label == SCALED_OBJECT:
        old_error, new_error = before.scaled_object_error, after.scaled_object_error
        old = (before.scaled_object_known, before.scaled_objects, before.keda_installed)
        new = (after.scaled_object_known, after.scaled_objects, after.keda_installed)
    else:
        old_error, new_error = before.deployment_error, after.deployment_error
        old = (before.deployment_known, before.deployments)
        new = (after.deployment_known, after.deployments)
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
    pools_before = {pool.deployment_name: pool for pool in before.pools}
    if new != old and new[0]:
        if label == DEPLOYMENT and not after.pools:
            log.warning(
                "no worker Deployment labelled %s in namespace %s (check "
                "TASKLANE_WORKER_SELECTOR and TASKLANE_NAMESPACE); routing uses heartbeats",
                after.selector,
                after.namespace,
            )
        if label == SCALED_OBJECT and after.keda_installed is False:
            if before.keda_installed is not False:
                log.info("KEDA ScaledObjects are not served in this cluster: no autoscaler")
        else:
            for pool in after.pools:
                _log_state(label, pools_before.get(pool.deployment_name), pool)
    for pool in after.pools:
        _log_verdicts(pools_before.get(pool.deployment_name), pool, flag)


def _log_state(label: str, before: PoolView | None, after: PoolView) -> None:
    name = after.deployment_name
    if label == DEPLOYMENT:
        dep = after.deployment
        if before is not None and before.deployment_known and before.deployment == dep:
            return
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
        return
    so = after.scaled_object
    if before is not None and before.scaled_object_known and before.scaled_object == so:
        return
    if so is None:
        log.info("no ScaledObject targets Deployment %s", name)
    else:
        details = ", ".join(f"{key}={value}" for key, value in so.as_dict().items())
        log.info("ScaledObject %s: %s", so.name, details)


def _log_verdicts(before: PoolView | None, after: PoolView, flag: bool) -> None:
    held_before = before is not None and before.held_at_zero(flag)
    held_after = after.held_at_zero(flag)
    if held_after and not held_before:
        log.warning(
            "worker pool %s is held at zero replicas: the tasks of its queues run in-process "
            "(no_workers) until it is scaled up, unless another pool consumes them",
            after.deployment_name,
        )
    elif held_before and not held_after:
        log.info("worker pool %s is no longer held at zero", after.deployment_name)
    sfz_before = before.scale_from_zero() if before is not None else None
    sfz_after = after.scale_from_zero()
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
        log.info(
            "scale-from-zero %s for pool %s: %s",
            "on" if sfz_after else "off",
            after.deployment_name,
            why,
        )


def category(error: str | None) -> str | None:
    """Failures of one kind share a prefix ('forbidden (403)', 'API server unreachable')."""
    return None if error is None else error.split(":", 1)[0]
