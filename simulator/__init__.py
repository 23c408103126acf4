"""The simulator: a Modbus TCP server of virtual meters for demos, tests and benchmarks."""
