#!/bin/bash
# Entrypoint of the retail Cassandra image. The official image's docker-entrypoint.sh sets the
# cluster name, seeds, snitch, addresses, num_tokens, dc and rack from CASSANDRA_* variables, but
# has no variable for the keys below; set them here, then hand over to it.
#
#   CASSANDRA_MATERIALIZED_VIEWS_ENABLED  true (default) or false; off by default since 4.0, and
#                                         view DDL is rejected on a node where it is off
#   CASSANDRA_INITIAL_TOKEN               the node's token (with CASSANDRA_NUM_TOKENS=1), so the
#                                         ring is laid out as retail/topology.py lays it out
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

# Only when starting the server (no arguments, flags only, or `cassandra ...`), not for
# `docker compose run cassandra-eu-west-1 cqlsh ...` and the like.
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ] || [ "$1" = cassandra ]; then
    set_key materialized_views_enabled "${CASSANDRA_MATERIALIZED_VIEWS_ENABLED:-true}"
    if [ -n "${CASSANDRA_INITIAL_TOKEN:-}" ]; then
        set_key initial_token "\"${CASSANDRA_INITIAL_TOKEN}\""
    fi
fi

exec docker-entrypoint.sh "$@"
