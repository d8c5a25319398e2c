"""Newsletter pipeline: YAML issues → validated content → rendered email → audiences → dispatched batches."""

__version__ = "0.1.0"
