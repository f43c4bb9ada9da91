"""The job repository: the only package that speaks SQL.

Its modules stack one way (each imports only those before it): `tables` (the schema) <-
`connect` (engines, driver errors translated) <- `migrate` (Alembic) <- `rows` (rows to domain
objects) <- `base` (RepositoryBase: transactions, versioned updates, fencing) <- `partitions`
(PartitionQueries) and `prune` (PruneQueries, deleting old executions) <- `store` (Repository).
"""

from batchctl.repository.base import Fence, settle
from batchctl.repository.connect import translate_errors
from batchctl.repository.store import Also, Decide, Repository

__all__ = ["Also", "Decide", "Fence", "Repository", "settle", "translate_errors"]
