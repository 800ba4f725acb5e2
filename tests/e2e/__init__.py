"""End-to-end checks that need more than one real process and a model of what a cluster does
(scripts/harness/autoscaling/harness.py says which parts are real and which are modelled)."""
