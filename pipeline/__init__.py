"""claude-partner-pipeline: fair, rate-limited, signed multi-partner access to Claude over Kafka."""

__version__ = "0.1.0"
