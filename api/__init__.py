"""tunehouse API: HTTP layer, data layer and storage. Never imports torch."""
