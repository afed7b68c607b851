#!/bin/bash
# Entrypoint of the retail Kafka image: Kafka secure by default (SASL_SSL with SCRAM-SHA-512 for
# clients and the inter-broker traffic, mutual TLS on the controller listener), its secrets read
# from Docker secrets, never from the Compose file or the environment it is given. Then it hands
# over to the official image's run script (the CMD).
#
#   /run/secrets/kafka-admin-password  the admin's password: the brokers' own login to each other
#   /run/secrets/kafka-scram-args      `--add-scram` lines, one SCRAM-SHA-512 credential per login
#                                      (an argument file of `kafka-storage format`, KIP-900)
#   /run/secrets/kafka-ca.pem, kafka-1.pem  the CA; the broker's PKCS#8 key and certificate
set -euo pipefail

secrets=/run/secrets
admin_password="$(cat "$secrets/kafka-admin-password")"
jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$admin_password\";"
# The image turns KAFKA_A_B into a.b (and ___ into -): the SCRAM login of each SASL listener.
export KAFKA_LISTENER_NAME_INTERNAL_SCRAM___SHA___512_SASL_JAAS_CONFIG="$jaas"
export KAFKA_LISTENER_NAME_EXTERNAL_SCRAM___SHA___512_SASL_JAAS_CONFIG="$jaas"

# The admin's client config for the healthcheck's Kafka tool, readable by this user only.
umask 077
cat > /tmp/admin-client.properties <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$jaas
ssl.truststore.type=PEM
ssl.truststore.location=$secrets/kafka-ca.pem
PROPS

# The image formats the storage without SCRAM credentials (its format step has no --add-scram),
# and the brokers need the admin's before their first start: format here first, the credentials
# read from the argument file so that no password is on a command line; the image's own format
# step then finds the directory formatted. KAFKA_OPTS is cleared: it starts the JMX exporter.
data="${KAFKA_LOG_DIRS:-/var/lib/kafka/data}"
if [ ! -f "$data/meta.properties" ]; then
    props="$(mktemp)"
    cat > "$props" <<PROPS
process.roles=$KAFKA_PROCESS_ROLES
node.id=$KAFKA_NODE_ID
controller.quorum.voters=$KAFKA_CONTROLLER_QUORUM_VOTERS
controller.listener.names=$KAFKA_CONTROLLER_LISTENER_NAMES
listeners=$KAFKA_LISTENERS
advertised.listeners=$KAFKA_ADVERTISED_LISTENERS
listener.security.protocol.map=$KAFKA_LISTENER_SECURITY_PROTOCOL_MAP
inter.broker.listener.name=$KAFKA_INTER_BROKER_LISTENER_NAME
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
log.dirs=$data
PROPS
    KAFKA_OPTS='' KAFKA_HEAP_OPTS=-Xmx256m /opt/kafka/bin/kafka-storage.sh format \
        --cluster-id="$CLUSTER_ID" --config="$props" "@$secrets/kafka-scram-args"
    rm -f "$props"
fi
umask 022
exec "$@"
