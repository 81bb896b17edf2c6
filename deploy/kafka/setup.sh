#!/usr/bin/env bash
# Create the SCRAM users: the workers, and one per partner listed by
# `claude-pipeline deploy init` (passwords from /secrets, never from here).
# A partner's user is partner-<id>: no partner id can name a service's user
# (admin, claude-pipeline), and so none can take over its password.
set -euo pipefail
BIN=/opt/kafka/bin
add_user() {
  "$BIN/kafka-configs.sh" --bootstrap-server kafka:9092 --command-config /secrets/admin.properties \
    --alter --entity-type users --entity-name "$1" \
    --add-config "SCRAM-SHA-512=[password=$(cat "$2")]"
}
add_user claude-pipeline /secrets/worker.password
while read -r partner; do
  [ -n "$partner" ] && add_user "partner-$partner" "/secrets/partners/$partner.kafka-password"
done < /secrets/partners.list
