"""Moved: ``BatchSpec`` is in ``taskiq_batching.spec``; running a batch in ``call.py``.

Kept only while modules of other branches import ``BatchSpec`` from here.
"""

from taskiq_batching.spec import BatchSpec as BatchSpec
