"""``worker_app``'s broker, for ``taskiq worker --receiver`` with BatchingReceiver.

The plugin's fallback (finding taskiq's default Receiver by its frames)
is switched off here, so that batches run only if the BatchingReceiver
hands itself to the plugin.
"""

from taskiq.receiver import Receiver

from taskiq_batching.worker import hook
from tests.integration.worker_app import broker


def _no_frame_lookup(depth: int = 2) -> Receiver | None:
    return None


# By name: the hook looks ``calling_receiver`` up in its module when it runs.
setattr(hook, "calling_receiver", _no_frame_lookup)  # noqa: B010

__all__ = ["broker"]
