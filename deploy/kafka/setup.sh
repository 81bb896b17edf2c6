#!/usr/bin/env bash
# Create the SCRAM users: the workers, and one per partner in $PARTNERS.
# (Passwords come from the environment; change them outside a demo.)
set -euo pipefail
BIN=/opt/kafka/bin
add_user() {
  "$BIN/kafka-configs.sh" --bootstrap-server kafka:9092 --command-config /deploy/admin.properties \
    --alter --entity-type users --entity-name "$1" \
    --add-config "SCRAM-SHA-512=[password=$2]"
}
add_user claude-pipeline "${WORKER_PASSWORD:?}"
for partner in ${PARTNERS:-}; do
  add_user "$partner" "${PARTNER_PASSWORD:?}-$partner"
done
