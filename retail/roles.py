"""What each Cassandra role may do: least privilege, as data.

Four roles (:mod:`retail.credentials`):

- ``retail_admin``: the superuser that replaces the built-in ``cassandra``; it creates the other
  roles and nothing runs as it day to day;
- ``retail_ops``: the DAGs and the migrations. It may create keyspaces; Cassandra then makes it
  the owner of what it creates (``retail``, ``retail_ops``), with every permission on them,
  AUTHORIZE included, which is how it hands out the grants below;
- ``retail_consumer``: the streaming consumers. They read and write the ``retail`` keyspace's
  event and rollup tables (the sink reads base rows back to fold rollups) and nothing else: no
  schema change, nothing in ``retail_ops``;
- ``retail_analyst``: ``retail report``. Reads ``retail``, writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from retail.credentials import CASSANDRA_ANALYST, CASSANDRA_CONSUMER, CASSANDRA_OPS
from retail.rows import KEYSPACE


@dataclass(frozen=True)
class Grant:
    permission: str
    resource: str
    role: str

    @property
    def cql(self) -> str:
        return f"GRANT {self.permission} ON {self.resource} TO {self.role}"


# Granted by the admin when the roles are made: before any keyspace exists.
ROLE_GRANTS: tuple[Grant, ...] = (
    Grant("CREATE", "ALL KEYSPACES", CASSANDRA_OPS),
    # The view rebuild reads how far each node built a view (view_build_status); only the
    # system keyspaces every client needs are readable without a grant.
    Grant("SELECT", "KEYSPACE system_distributed", CASSANDRA_OPS),
)

# Granted by the owner of the platform's keyspace (the operations role, which created it) after
# every migration run: a GRANT needs its keyspace to exist, and repeating one changes nothing.
KEYSPACE_GRANTS: tuple[Grant, ...] = (
    Grant("SELECT", f"KEYSPACE {KEYSPACE}", CASSANDRA_CONSUMER),
    Grant("MODIFY", f"KEYSPACE {KEYSPACE}", CASSANDRA_CONSUMER),
    Grant("SELECT", f"KEYSPACE {KEYSPACE}", CASSANDRA_ANALYST),
)
