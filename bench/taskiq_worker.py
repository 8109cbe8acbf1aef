"""What ``taskiq worker bench.taskiq_worker:broker`` runs (``TBB_*`` settings)."""

from bench.metrics_app import instrument
from bench.taskiq_app import AppSettings, build

settings = AppSettings.from_env()
app = build(settings)
broker = app.broker
instrument(broker, settings.metrics, settings.queue)
