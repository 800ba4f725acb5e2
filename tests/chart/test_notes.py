"""NOTES.txt: what `helm install` prints names the mode and the next command to run."""

from __future__ import annotations

from tests.chart.helpers import SCALED, SCALED_KEDA, render_notes


def test_single_mode_points_at_scaled_mode() -> None:
    notes = render_notes()
    assert "Mode: single" in notes
    assert "kubectl -n default port-forward svc/tl-tasklane-api 8000:8000" in notes
    assert "--set celery.enabled=true" in notes
    assert "get secret tl-tasklane-api-token" in notes


def test_keda_mode_shows_how_to_pause_autoscaling() -> None:
    notes = render_notes(SCALED_KEDA)
    assert "Mode: scaled" in notes
    assert "annotate scaledobject tl-tasklane-worker autoscaling.keda.sh/paused-replicas=N" in notes
    assert "kubectl -n default scale" not in notes


def test_manual_mode_shows_kubectl_scale() -> None:
    values = {"celery": {"enabled": True, "worker": {"autoscaling": {"keda": {"enabled": False}}}}}
    notes = render_notes(values)
    assert "kubectl -n default scale deploy/tl-tasklane-worker --replicas=N" in notes
    assert "paused-replicas" not in notes


def test_missing_keda_api_is_reported() -> None:
    notes = render_notes(SCALED)
    assert "serves no keda.sh/v1alpha1" in notes
    assert "keda.force=true" in notes


def test_hpa_mode_names_the_hpa() -> None:
    values = {
        "celery": {
            "enabled": True,
            "worker": {"autoscaling": {"keda": {"enabled": False}, "hpa": {"enabled": True}}},
        }
    }
    assert "kubectl -n default get hpa tl-tasklane-worker" in render_notes(values)


def test_generated_secrets_are_named_with_their_cleanup() -> None:
    notes = render_notes(SCALED)
    assert "generated tl-tasklane-api-token, tl-tasklane-redis-auth once" in notes
    assert "kubectl -n default delete secret tl-tasklane-api-token tl-tasklane-redis-auth" in notes
    given = render_notes({"api": {"token": "t" * 40}})
    assert "delete secret" not in given
