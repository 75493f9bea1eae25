-- Advisory locks belong to the pipeline: a field run holds pg_try_advisory_lock(hash(field)), so
-- any role that can call the advisory-lock functions can stop a field's runs by taking its key
-- first. PostgreSQL grants them to PUBLIC; take them away (function privileges are per database,
-- so this covers this database). Only a superuser can revoke them; when the migrations run as an
-- ordinary role, an administrator does the same by hand (README, "Security").
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        REVOKE EXECUTE ON FUNCTION
            pg_advisory_lock(bigint), pg_advisory_lock(integer, integer),
            pg_advisory_lock_shared(bigint), pg_advisory_lock_shared(integer, integer),
            pg_try_advisory_lock(bigint), pg_try_advisory_lock(integer, integer),
            pg_try_advisory_lock_shared(bigint), pg_try_advisory_lock_shared(integer, integer),
            pg_advisory_xact_lock(bigint), pg_advisory_xact_lock(integer, integer),
            pg_advisory_xact_lock_shared(bigint), pg_advisory_xact_lock_shared(integer, integer),
            pg_try_advisory_xact_lock(bigint), pg_try_advisory_xact_lock(integer, integer),
            pg_try_advisory_xact_lock_shared(bigint), pg_try_advisory_xact_lock_shared(integer, integer)
        FROM PUBLIC;
    END IF;
END
$$;

-- Ingest finds copies of an already-ingested file (moved, or a .gz beside it) by content.
CREATE INDEX IF NOT EXISTS ingested_files_sha256 ON ingested_files (sha256);
