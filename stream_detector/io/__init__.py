"""The asyncio shell around the core: Kafka, metrics over HTTP, Alertmanager."""
