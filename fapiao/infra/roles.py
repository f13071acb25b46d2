"""One PostgreSQL role per service, owning only its schema (least privilege).

`provision(admin_url, services, password=...)` creates (or updates) the login role `fapiao_<service>` of each
service, the service's schema owned by it, and hands it whatever the schema already holds (a database first
migrated by one shared role). It runs as the admin URL's user, who must be able to create roles (a superuser, or
CREATEROLE); `RolesRefused` says when it cannot. The roles get nothing else: no other schema is theirs, and a
schema's owner grants nothing to anyone by default, so the notifier's role cannot read `issuer.tenants`.

`make up` (fapiao.stack), docker compose (its db-roles container runs `python -m fapiao.infra.roles`) and the
test harness (tests/harness) call this. The backup tool and the CLI keep using the admin URL; a restore gives the
schemas back to the roles (`hand_over`).
"""

from __future__ import annotations

import subprocess

from sqlalchemy.engine import make_url

__all__ = ["SCHEMAS", "RolesRefused", "hand_over", "hand_over_sql", "provision", "provision_sql", "role_for",
           "role_url"]

SCHEMAS = {"issuer": "issuer", "taxstore": "taxstore", "sync": "sync", "reconciler": "reconciler",
           "notifier": "notifier"}
"""Each service's schema (services/<name>/models.py SCHEMA)."""


class RolesRefused(RuntimeError):
    """The admin URL's user may not create roles or hand over schemas (a managed database's plain user)."""


def role_for(service: str) -> str:
    return f"fapiao_{service}"


def role_url(database_url: str, service: str, password: str) -> str:
    """The same server and database, as the service's own role."""
    return make_url(database_url).set(username=role_for(service), password=password).render_as_string(
        hide_password=False)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def provision_sql(service: str, password: str) -> str:
    """Idempotent SQL: the role (its password set again), the schema owned by it, every object in it handed over."""
    role, schema = role_for(service), SCHEMAS[service]
    return f"""
DO $do$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {_literal(role)}) THEN
    CREATE ROLE "{role}" LOGIN PASSWORD {_literal(password)};
  ELSE
    ALTER ROLE "{role}" LOGIN PASSWORD {_literal(password)};
  END IF;
END
$do$;
CREATE SCHEMA IF NOT EXISTS "{schema}" AUTHORIZATION "{role}";
""" + hand_over_sql(service)


def hand_over_sql(service: str) -> str:
    """Idempotent SQL: when the service's role exists, it owns its schema and everything in it again (after
    `fapiao restore`, which recreates the schemas as the restoring user); nothing otherwise (single-URL mode)."""
    role, schema = role_for(service), SCHEMAS[service]
    return f"""
DO $do$
DECLARE r record;
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {_literal(role)})
     OR NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = {_literal(schema)}) THEN
    RETURN;
  END IF;
  EXECUTE format('ALTER SCHEMA %I OWNER TO %I', {_literal(schema)}, {_literal(role)});
  -- Tables, views and free-standing sequences (a serial or identity sequence follows its table).
  FOR r IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = {_literal(schema)} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
             AND c.relowner <> {_literal(role)}::regrole
             AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                             AND d.deptype IN ('a', 'i') AND d.refclassid = 'pg_class'::regclass)
  LOOP
    EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', {_literal(schema)}, r.relname, {_literal(role)});
  END LOOP;
  FOR r IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
           WHERE n.nspname = {_literal(schema)} AND t.typtype IN ('e', 'd') AND t.typowner <> {_literal(role)}::regrole
  LOOP
    EXECUTE format('ALTER TYPE %I.%I OWNER TO %I', {_literal(schema)}, r.typname, {_literal(role)});
  END LOOP;
  FOR r IN SELECT p.oid::regprocedure AS fn FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = {_literal(schema)} AND p.proowner <> {_literal(role)}::regrole
  LOOP
    EXECUTE format('ALTER ROUTINE %s OWNER TO %I', r.fn, {_literal(role)});
  END LOOP;
END
$do$;
"""


def _psql(admin_url: str, sql: str) -> None:
    from fapiao.backup import BackupError, _libpq, pg_tool

    try:
        psql = pg_tool("psql")
        uri, env = _libpq(admin_url)
    except BackupError as exc:
        raise RolesRefused(str(exc)) from None
    # A schema in use (a transaction holding its rows) cannot change owner: say so after 30 s, never hang.
    done = subprocess.run([psql, uri, "-v", "ON_ERROR_STOP=1", "-qAt", "-f", "-"], input="SET lock_timeout = '30s';\n"
                          + sql, env=env, capture_output=True, text=True, timeout=90)
    if done.returncode != 0:
        out = (done.stderr or done.stdout).strip().splitlines()
        raise RolesRefused(out[-1][:300] if out else f"psql exited {done.returncode}")


def hand_over(admin_url: str, services: list[str] | tuple[str, ...] = tuple(SCHEMAS)) -> None:
    """Give each service's schema back to its role, where the role exists (see hand_over_sql)."""
    _psql(admin_url, "".join(hand_over_sql(s) for s in services))


def provision(admin_url: str, services: list[str] | tuple[str, ...], *, password: str) -> dict[str, str]:
    """Each service's role and schema in the admin URL's database; returns each service's database URL."""
    _psql(admin_url, "".join(provision_sql(s, password) for s in services))
    return {s: role_url(admin_url, s, password) for s in services}


def main() -> int:
    """`python -m fapiao.infra.roles`: provision every service's role with FAPIAO_DATABASE_URL (an admin) and
    FAPIAO_DB_ROLE_PASSWORD (docker compose runs this once before the services)."""
    import os
    import sys

    admin_url, password = os.environ.get("FAPIAO_DATABASE_URL"), os.environ.get("FAPIAO_DB_ROLE_PASSWORD")
    if not admin_url or not password:
        print("set FAPIAO_DATABASE_URL (a user that may create roles) and FAPIAO_DB_ROLE_PASSWORD", file=sys.stderr)
        return 2
    try:
        provision(admin_url, tuple(SCHEMAS), password=password)
    except RolesRefused as exc:
        print(f"could not create the services' roles: {exc}", file=sys.stderr)
        return 1
    print(f"roles ready: {', '.join(role_for(s) for s in SCHEMAS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
