"""The writer: consumes readings, writes them to InfluxDB in batches, acks after success."""
