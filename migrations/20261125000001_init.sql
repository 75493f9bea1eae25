-- lensnet's first schema: runs and their audit trail, ingested files, AlertFinder candidates and
-- fits, model verdicts. Primary keys and unique constraints make every write idempotent: writers
-- use INSERT .. ON CONFLICT, so re-running a stage never duplicates a row.

-- One DAG run (scheduled, one-off, replay step, demo).
CREATE TABLE runs (
    run_id        uuid PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('run', 'replay', 'demo', 'ingest', 'serve')),
    field         text,
    as_of_hjd     double precision,
    replay_id     uuid,
    config_hash   text NOT NULL,
    model_sha256  text,
    status        text NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'succeeded', 'failed', 'abandoned')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    error         text
);
CREATE INDEX runs_field_started ON runs (field, started_at DESC);
CREATE INDEX runs_replay ON runs (replay_id) WHERE replay_id IS NOT NULL;

-- Audit: every attempt of every stage, with what it read and wrote.
CREATE TABLE stage_attempts (
    run_id              uuid NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    stage               text NOT NULL,
    field               text NOT NULL DEFAULT '',
    attempt             integer NOT NULL CHECK (attempt >= 1),
    inputs              jsonb NOT NULL DEFAULT '{}'::jsonb,
    outputs             jsonb NOT NULL DEFAULT '{}'::jsonb,
    rows_in             bigint,
    rows_out            bigint,
    config_hash         text NOT NULL,
    model_sha256        text,
    execution_provider  text,
    runtime_version     text,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    duration_ms         bigint,
    status              text NOT NULL DEFAULT 'running'
                        CHECK (status IN ('running', 'succeeded', 'failed', 'abandoned', 'skipped')),
    error               text,
    retryable           boolean,
    PRIMARY KEY (run_id, stage, field, attempt)
);
CREATE INDEX stage_attempts_stage_started ON stage_attempts (stage, started_at DESC);

-- Every survey file ingest has seen, good or quarantined. `path` is the file's location as given.
-- Growth detection: a later look accepts the file as grown when its first `ingested_bytes`
-- bytes still hash to `sha256`, and parses only what follows.
CREATE TABLE ingested_files (
    path              text PRIMARY KEY,
    format            text NOT NULL,
    star_id           text,
    field             text,
    site              text,
    band              text,
    size_bytes        bigint NOT NULL CHECK (size_bytes >= 0),
    sha256            text NOT NULL,
    seen_sha256       text NOT NULL,
    ingested_bytes    bigint NOT NULL CHECK (ingested_bytes >= 0),
    lines             bigint NOT NULL CHECK (lines >= 0),
    rows              bigint NOT NULL CHECK (rows >= 0),
    skipped_lines     bigint NOT NULL DEFAULT 0 CHECK (skipped_lines >= 0),
    last_line         text NOT NULL DEFAULT '',
    status            text NOT NULL CHECK (status IN ('ingested', 'quarantined', 'conflict')),
    reason            text,
    flux_sign         smallint NOT NULL CHECK (flux_sign IN (-1, 1)),
    time_system       text NOT NULL,
    baseline_flux     double precision,
    mag_zp            double precision,
    first_seen_at     timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingested_files_field ON ingested_files (field, site);
CREATE INDEX ingested_files_not_ingested ON ingested_files (status) WHERE status <> 'ingested';

-- An AlertFinder candidate: one star, flagged on data up to `as_of_hjd`.
CREATE TABLE candidates (
    candidate_id    text PRIMARY KEY,
    star_id         text NOT NULL,
    field           text NOT NULL,
    as_of_hjd       double precision NOT NULL,
    sites           text[] NOT NULL,
    n_points        integer NOT NULL,
    n_high          integer NOT NULL,
    dchi2_broken    double precision NOT NULL,
    t_rise          double precision,
    first_run_id    uuid REFERENCES runs (run_id) ON DELETE SET NULL,
    diagnosis       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (field, star_id, as_of_hjd)
);
CREATE INDEX candidates_star ON candidates (star_id);
CREATE INDEX candidates_field_asof ON candidates (field, as_of_hjd DESC);

-- Fits of a candidate: the broken line and the EventFinder point-lens grid.
CREATE TABLE fits (
    candidate_id  text NOT NULL REFERENCES candidates (candidate_id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('broken_line', 'pspl_grid')),
    dchi2         double precision NOT NULL,
    t0            double precision,
    teff          double precision,
    regime        smallint,
    t_rise        double precision,
    slope         double precision,
    site_fluxes   jsonb NOT NULL DEFAULT '{}'::jsonb,
    params        jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (candidate_id, kind)
);

-- A model's verdict on a candidate; a new model version adds rows and never touches older ones.
CREATE TABLE verdicts (
    candidate_id       text NOT NULL REFERENCES candidates (candidate_id) ON DELETE CASCADE,
    model_sha256       text NOT NULL,
    run_id             uuid REFERENCES runs (run_id) ON DELETE SET NULL,
    replay_id          uuid,
    p_yes              real NOT NULL CHECK (p_yes BETWEEN 0 AND 1),
    p_maybe            real NOT NULL CHECK (p_maybe BETWEEN 0 AND 1),
    p_no               real NOT NULL CHECK (p_no BETWEEN 0 AND 1),
    binary_score       real NOT NULL CHECK (binary_score BETWEEN 0 AND 1),
    verdict            text NOT NULL CHECK (verdict IN ('yes', 'maybe', 'no')),
    threshold_purity   real NOT NULL,
    threshold_recall   real NOT NULL,
    first_flagged_hjd  double precision,
    evidence           jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (candidate_id, model_sha256)
);
CREATE INDEX verdicts_verdict_created ON verdicts (verdict, created_at DESC);

-- The read-only role for follow-up coordinators. Roles are cluster-wide, so the role may exist
-- already (another database of the cluster, or a parallel migration).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lensnet_reader') THEN
        CREATE ROLE lensnet_reader LOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

GRANT USAGE ON SCHEMA public TO lensnet_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO lensnet_reader;
-- Tables and views added by later migrations are readable too.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO lensnet_reader;
