"""natsbench result store: SQLAlchemy 2 models, Alembic migrations and the `Store` repository.

`Store(url)` opens a SQLite file (`sqlite:///results/natsbench.sqlite`) or a PostgreSQL
database (`postgresql+psycopg://user@host:5432/db`); `run_key(config)` is the stable identity
of a cell. See docs/DESIGN.md for the record format.
"""

from .errors import SchemaError, StoreError, StoreURLError
from .keys import CODE_VERSION, CONFIG_KEYS, canonical_json, run_key
from .models import RUN_STATUSES
from .records import RUN_FIELDS
from .store import Store

__all__ = [
    "CODE_VERSION",
    "CONFIG_KEYS",
    "RUN_FIELDS",
    "RUN_STATUSES",
    "SchemaError",
    "Store",
    "StoreError",
    "StoreURLError",
    "canonical_json",
    "run_key",
]
