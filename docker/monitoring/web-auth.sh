#!/bin/sh
# Basic auth for Prometheus, Alertmanager and statsd_exporter (the exporter-toolkit's
# --web.config.file): one login, `monitor`, with the password from MONITORING_PASSWORD, hashed with
# bcrypt. Runs once before them (the monitoring-auth service) and writes into the shared volume:
#   web-config.yml  basic_auth_users with the bcrypt hash, for all three servers
#   password        the password itself, for Prometheus's scrapes of the other two and of itself
#                   (basic_auth.password_file) and for the healthchecks
# Both 0400, owned by nobody (65534), the user the three images run as. The password reaches
# htpasswd on stdin, not on its command line.
set -eu
: "${MONITORING_PASSWORD:?is not set: see docker/secrets.example.env}"
umask 077
out=/auth
hash="$(printf '%s\n' "$MONITORING_PASSWORD" | htpasswd -niB -C 10 monitor | cut -d: -f2-)"
printf 'basic_auth_users:\n  monitor: %s\n' "$hash" > "$out/web-config.yml.new"
printf '%s' "$MONITORING_PASSWORD" > "$out/password.new"
for f in web-config.yml password; do
    chown 65534:65534 "$out/$f.new"
    chmod 0400 "$out/$f.new"
    mv -f "$out/$f.new" "$out/$f"
done
echo "monitoring-auth: wrote web-config.yml and password"
