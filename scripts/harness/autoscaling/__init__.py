"""A local stand-in for a cluster's autoscaling of the worker Deployment: real Redis, api and
Celery workers; KEDA, the HPA, the ReplicaSet controller and the kubelet modelled.

Versions whose rules it follows: KEDA 2.12 and later (`advanced.scalingModifiers`, which the
chart's ScaledObject needs, arrived in 2.12: the chart's `tasklane/keda-min-version`), and
Kubernetes 1.33 (the version the chart's objects are validated against: tests/chart/helpers.py)
for the HorizontalPodAutoscaler (autoscaling/v2 behavior defaults, the 0.1 tolerance), the
ReplicaSet controller's scale-down order (LogarithmicScaleDown) and the kubelet's grace period.
A rule that changes in a later release is changed here with the version named.

harness.py says which parts are real and which are modelled; autoscaler.py names the upstream
source of every rule; scripts/autoscale-demo and tests/e2e run it.
"""
