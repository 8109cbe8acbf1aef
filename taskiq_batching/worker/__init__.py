"""The worker integration: the hook, the pump and the one per-message lifecycle."""
