#!/bin/sh
# Run once by the postgres image's entrypoint, when the data volume is still empty
# (/docker-entrypoint-initdb.d): the role `mlflow` (not a superuser) owning the databases
# `mlflow` (runs, models) and `mlflow_auth` (users, permissions). psql's \getenv reads the
# password from the environment, so it appears on no command line.
set -eu
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres <<'SQL'
\getenv db_password MLFLOW_DB_PASSWORD
CREATE ROLE mlflow LOGIN PASSWORD :'db_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
SQL
