"""The pure core: no Kafka, no asyncio, no HTTP. Reports and time in, changes out."""
