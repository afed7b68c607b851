"""The streaming consumers: Kafka -> Cassandra, one consumer group per region."""
