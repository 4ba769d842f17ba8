"""Real datasets read from their own release layouts into hoigen shards (``hoigen ingest ...``)."""
