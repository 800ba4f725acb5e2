"""The example domain tasks; importing this package registers every one of them.

autodiscover() imports `app.tasks` in the api, the Celery workers and beat alike, so each
process knows the same names (DESIGN.md §2).
"""

from app.tasks import audio, impressions, notify, ratings, sessions

__all__ = ["audio", "impressions", "notify", "ratings", "sessions"]
