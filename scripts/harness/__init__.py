"""Support code shared by scripts/ and tests/ (DESIGN §2: scripts never import tests/): real
redis-server, `tasklane serve` and Celery processes, the sample task modules they load, the
scaled-mode api, chart-to-local, and the KEDA/HPA model in `autoscaling/`."""
