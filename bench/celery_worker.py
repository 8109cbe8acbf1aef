"""What ``celery -A bench.celery_worker:app worker`` runs (``TBB_*`` vars)."""

import os

from bench.celery_app import make_app

app, sink = make_app(os.environ["TBB_REDIS_URL"], os.environ["TBB_QUEUE"])
