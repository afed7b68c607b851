"""The local stack: the platform's real servers as processes on loopback addresses.

Cassandra (one JVM per node, three DCs), Kafka (KRaft), Prometheus, Alertmanager and
statsd_exporter, fetched once into a cache outside the repository and started the way ccm runs
Cassandra clusters. ``retail stack`` is the command-line front of :class:`stack.local.LocalStack`.
"""
