"""Kubernetes awareness: the api follows the worker Deployment and its KEDA ScaledObject
(watch.py) so routing sees `kubectl scale --replicas=0` at once and learns scale-from-zero from
the ScaledObject (state.py); `tasklane scale` pauses or scales the pool (scaling.py);
`tasklane secrets ensure` creates the Secrets a release needs, once (generated_secrets.py);
both commands call the API through calls.py.

Optional and off outside a cluster (TASKLANE_KUBERNETES=auto|on|off). Nothing here imports the
`kubernetes` package at module load, so single mode and workers never pay for it.
"""
