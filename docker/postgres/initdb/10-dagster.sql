-- Dagster's own database (runs, event logs, schedules: dagster-postgres
-- storage, see docker/dagster/dagster.yaml) beside the `salespulse` database.
--
-- Mounted into the postgres container's /docker-entrypoint-initdb.d: the
-- image runs it once, with psql as POSTGRES_USER, on an empty data directory.
-- The role name, password and database come from the container environment
-- (DAGSTER_PG_USERNAME, DAGSTER_PG_PASSWORD, DAGSTER_PG_DB, set from .env),
-- read with psql's \getenv, so no credential is written in this file.
-- The SalesPulse schema and service roles are NOT created here: the `migrate`
-- service (`salespulse migrate`) applies sql/ on every start.

\set ON_ERROR_STOP on
\getenv dagster_user DAGSTER_PG_USERNAME
\getenv dagster_password DAGSTER_PG_PASSWORD
\getenv dagster_db DAGSTER_PG_DB

\if :{?dagster_user}
\else
    \set dagster_user dagster
\endif
\if :{?dagster_db}
\else
    \set dagster_db dagster
\endif
\if :{?dagster_password}
\else
    \echo 'DAGSTER_PG_PASSWORD is not set: the dagster role needs a password'
    DO $$ BEGIN RAISE EXCEPTION 'DAGSTER_PG_PASSWORD is not set'; END $$;
\endif

CREATE ROLE :"dagster_user" LOGIN PASSWORD :'dagster_password';
CREATE DATABASE :"dagster_db" OWNER :"dagster_user";
REVOKE ALL ON DATABASE :"dagster_db" FROM PUBLIC;
GRANT ALL ON DATABASE :"dagster_db" TO :"dagster_user";
