-- Sharded reprocessing (`lensnet replay --seasons .. --fields .. --shard-index I`, Slurm job
-- arrays, Kubernetes Indexed Jobs): a replay job is one replay id over a list of (season, field)
-- shards; each shard is an idempotent task that records here where and how it ran, so that
-- `lensnet replay-report` can gather what the shards wrote and name the ones that failed.

CREATE TABLE replay_jobs (
    replay_id     uuid PRIMARY KEY,
    kind          text NOT NULL,
    seasons       integer[] NOT NULL,
    fields        text[] NOT NULL,
    step_days     double precision NOT NULL CHECK (step_days > 0),
    model_sha256  text NOT NULL,
    shards        integer NOT NULL CHECK (shards >= 1),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE replay_shards (
    replay_id     uuid NOT NULL REFERENCES replay_jobs (replay_id) ON DELETE CASCADE,
    shard_index   integer NOT NULL CHECK (shard_index >= 0),
    season        integer NOT NULL,
    field         text NOT NULL,
    status        text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped')),
    attempts      integer NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    host          text NOT NULL DEFAULT '',
    pid           integer,
    log_path      text,
    steps         integer,
    failed_steps  integer,
    error         text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    PRIMARY KEY (replay_id, shard_index)
);
