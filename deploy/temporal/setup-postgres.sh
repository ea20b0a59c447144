#!/bin/sh
# Create Temporal's two PostgreSQL databases on first start, upgrade their schemas on every start
# (update-schema applies only versions not yet applied). Runs in temporalio/admin-tools.
set -eu
tool() { temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_HOST" -p 5432 -u "$POSTGRES_USER" "$@"; }
schemas=/etc/temporal/schema/postgresql/v12
for pair in temporal:temporal temporal_visibility:visibility; do
  db=${pair%%:*}
  dir=${pair##*:}
  if tool --db "$db" create; then  # fails when the database exists: set up only a new one
    tool --db "$db" setup-schema -v 0.0
  fi
  tool --db "$db" update-schema -d "$schemas/$dir/versioned"
done
echo "temporal schemas ready"
