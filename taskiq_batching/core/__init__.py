"""The batching core: buffers, flush rules, bounds and running a batch."""
