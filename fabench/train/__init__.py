"""One training run: configuration, loop, records and resumption."""
