#!/bin/bash
# Entrypoint of the retail Cassandra image. The official image's docker-entrypoint.sh sets the
# cluster name, seeds, snitch, addresses, num_tokens, dc and rack from CASSANDRA_* variables, but
# has no variable for the keys below; set them here, then hand over to it.
#
#   CASSANDRA_MATERIALIZED_VIEWS_ENABLED  true (default) or false; off by default since 4.0, and
#                                         view DDL is rejected on a node where it is off
#   CASSANDRA_INITIAL_TOKEN               the node's token (with CASSANDRA_NUM_TOKENS=1), so the
#                                         ring is laid out as retail/topology.py lays it out
#   JOLOKIA_PASSWORD                      the Jolokia agent's password (user monitor); written
#                                         into the agent's options file (0600, owner cassandra),
#                                         then removed from the server's environment
#
# and, always, PasswordAuthenticator, CassandraAuthorizer and client TLS (secure() below).
set -euo pipefail

conf="${CASSANDRA_CONF:-/etc/cassandra}/cassandra.yaml"

# set_key KEY VALUE: drop any active `KEY:` line and append the new value. A restarted container
# keeps its file, so the line may already be ours; this leaves exactly one either way. The file is
# rewritten in place (cat >) as docker-entrypoint.sh does, keeping its owner and mode.
set_key() {
    local tmp
    tmp="$(mktemp)"
    grep -v -E "^$1:" "$conf" > "$tmp" || true
    printf '%s: %s\n' "$1" "$2" >> "$tmp"
    cat "$tmp" > "$conf"
    rm -f "$tmp"
}

# drop_block KEY: drop a top-level `KEY:` mapping and its indented lines, so that it can be
# appended whole (set_key handles one-line keys only).
drop_block() {
    local tmp
    tmp="$(mktemp)"
    awk -v key="$1:" '
        index($0, key) == 1 { skip = 1; next }
        skip && /^[^ #]/ { skip = 0 }
        !skip { print }
    ' "$conf" > "$tmp"
    cat "$tmp" > "$conf"
    rm -f "$tmp"
}

# Secure by default, as the local stack (stack/templates/cassandra.yaml): logins and grants, and
# clients over TLS with the node's key and certificate from `make compose-secrets`, mounted
# read-only under /run/retail-tls. The key is copied for the cassandra user, readable by it only
# (the mounted file keeps its owner on the host).
secure() {
    set_key authenticator PasswordAuthenticator
    set_key authorizer CassandraAuthorizer
    set_key role_manager CassandraRoleManager
    if [ ! -f /run/retail-tls/server.pem ]; then
        echo "no /run/retail-tls/server.pem: run \`make compose-secrets\` first" >&2
        exit 1
    fi
    install -d -o cassandra -g cassandra -m 0700 /etc/cassandra/tls
    install -o cassandra -g cassandra -m 0600 /run/retail-tls/server.pem /etc/cassandra/tls/server.pem
    install -o cassandra -g cassandra -m 0644 /run/retail-tls/ca.pem /etc/cassandra/tls/ca.pem
    drop_block client_encryption_options
    cat >> "$conf" <<'YAML'
client_encryption_options:
  enabled: true
  optional: false
  ssl_context_factory:
    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory
  keystore: /etc/cassandra/tls/server.pem
  truststore: /etc/cassandra/tls/ca.pem
  require_client_auth: false
YAML
}

# The Jolokia agent's options (JVM_EXTRA_OPTS passes -javaagent:...=config=<this file>): the
# container's own address on the Compose network, never 0.0.0.0; basic authentication; the
# access policy baked into the image (docker/jvm/jolokia-access.xml, rendered by
# stack/jolokia.py). The password is in the file, never on the java command line.
write_jolokia_config() {
    local dir=/etc/jolokia/run address password
    : "${JOLOKIA_PASSWORD:?is not set: see docker/secrets.example.env}"
    address="$(hostname -i | awk '{print $1}')"
    # Properties-file escaping of the characters that would end the key or value.
    password="$(printf '%s' "$JOLOKIA_PASSWORD" | sed 's/[\\=: #!]/\\&/g')"
    install -d -m 0700 -o cassandra -g cassandra "$dir"
    (
        umask 077
        printf '%s\n' \
            "host=${address}" \
            "port=8778" \
            "discoveryEnabled=false" \
            "authMode=basic" \
            "user=monitor" \
            "password=${password}" \
            "policyLocation=file:///etc/jolokia/jolokia-access.xml" \
            > "$dir/agent.properties"
    )
    chown cassandra:cassandra "$dir/agent.properties"
}

# Only when starting the server (no arguments, flags only, or `cassandra ...`), not for
# `docker compose run cassandra-eu-west-1 cqlsh ...` and the like.
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ] || [ "$1" = cassandra ]; then
    secure
    set_key materialized_views_enabled "${CASSANDRA_MATERIALIZED_VIEWS_ENABLED:-true}"
    # An acknowledged write survives a crash of its node, as on the local stack (DESIGN.md,
    # "Cassandra's commit log"): batch sync, which takes no sync period.
    set_key commitlog_sync batch
    drop_block commitlog_sync_period
    if [ -n "${CASSANDRA_INITIAL_TOKEN:-}" ]; then
        set_key initial_token "\"${CASSANDRA_INITIAL_TOKEN}\""
    fi
    write_jolokia_config
fi
unset JOLOKIA_PASSWORD

exec docker-entrypoint.sh "$@"
