"""The worker: consumes jobs, reads devices over Modbus TCP, publishes readings."""
