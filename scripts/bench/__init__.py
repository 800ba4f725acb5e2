"""tasklane's benchmarks (GitHub issue 6, item 3): `python -m scripts.bench [--quick]`.

Every benchmark measures a plain-Celery / plain-FastAPI baseline and tasklane in the same run,
alternating them round by round on the same services, because these machines are too noisy for
numbers taken minutes apart to be compared. Kept free of imports: Celery workers import
scripts.bench.tasks, and must not pay for the harness.
"""
