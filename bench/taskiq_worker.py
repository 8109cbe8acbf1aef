"""What ``taskiq worker bench.taskiq_worker:broker`` runs (``TBB_*`` settings)."""

from bench.taskiq_app import AppSettings, build

app = build(AppSettings.from_env())
broker = app.broker
