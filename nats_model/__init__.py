"""NAtS (Neural Attention Search) and the KV-cache policies natsbench compares it with.

This package imports nothing from `services`, `orchestrator` or `dashboard`.
"""

__version__ = "0.1.0"
