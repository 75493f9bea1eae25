-- Coordinators (`lensnet web`): vetters' accounts, their labels, and the alert webhooks' outbox
-- and delivery log.

-- Accounts of the web pages, written by `lensnet user add` (argon2 hashes). The web server reads
-- them through its own (owner) connection; coordinators' read-only role never sees them.
CREATE TABLE web_users (
    name           text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    role           text NOT NULL CHECK (role IN ('reader', 'vetter')),
    password_hash  text NOT NULL,
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON web_users FROM lensnet_reader;

-- A vetter's label of a candidate: yes / maybe / no with a reason and a comment, and the model
-- verdict that the vetter saw. Rows are only ever added: a new label of the same candidate by
-- the same vetter supersedes the older one (the views take the newest).
CREATE TABLE vetting (
    vetting_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    candidate_id   text NOT NULL REFERENCES candidates (candidate_id) ON DELETE CASCADE,
    field          text NOT NULL,
    star_id        text NOT NULL,
    vetter         text NOT NULL,
    label          text NOT NULL CHECK (label IN ('yes', 'maybe', 'no')),
    reason         text CHECK (reason IN ('event', 'variable', 'artefact', 'asteroid', 'other')),
    comment        text NOT NULL DEFAULT '' CHECK (length(comment) <= 2000),
    model_sha256   text,
    model_verdict  text CHECK (model_verdict IN ('yes', 'maybe', 'no')),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vetting_star ON vetting (field, star_id, created_at DESC);
CREATE INDEX vetting_candidate ON vetting (candidate_id, vetter, created_at DESC);

-- The vetters' role: it may add vetting rows and do nothing else (no SELECT, not even on
-- vetting; the web server reads through lensnet_reader). Roles are cluster-wide: it may exist.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lensnet_vetter') THEN
        CREATE ROLE lensnet_vetter LOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
GRANT USAGE ON SCHEMA public TO lensnet_vetter;
GRANT INSERT (candidate_id, field, star_id, vetter, label, reason, comment, model_sha256, model_verdict)
    ON vetting TO lensnet_vetter;

-- Alert webhooks: one notification per (field, star, model), the first live "yes" (the outbox),
-- and every attempt to deliver it to each configured receiver. `target` is the receiver's URL
-- without its path and query (webhook URLs carry their secret there); `target_sha256` keys it.
CREATE TABLE alert_notifications (
    field          text NOT NULL,
    star_id        text NOT NULL,
    model_sha256   text NOT NULL,
    candidate_id   text NOT NULL REFERENCES candidates (candidate_id) ON DELETE CASCADE,
    run_id         uuid,
    as_of_hjd      double precision NOT NULL,
    binary_score   real NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (field, star_id, model_sha256)
);
CREATE INDEX alert_notifications_created ON alert_notifications (created_at DESC);

CREATE TABLE webhook_deliveries (
    field          text NOT NULL,
    star_id        text NOT NULL,
    model_sha256   text NOT NULL,
    target_sha256  text NOT NULL,
    attempt        integer NOT NULL CHECK (attempt >= 1),
    target         text NOT NULL,
    status         text NOT NULL CHECK (status IN ('delivered', 'failed')),
    http_status    integer,
    error          text,
    attempted_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (field, star_id, model_sha256, target_sha256, attempt),
    FOREIGN KEY (field, star_id, model_sha256) REFERENCES alert_notifications ON DELETE CASCADE
);

-- vetting_disagreements: candidates where a vetter and a model disagree. One row per (candidate,
-- vetter, model): the vetter's newest label of the candidate beside that model's verdict on it.
-- kind: 'missed' (vetter yes, model not yes), 'false_alarm' (vetter no, model yes), 'other'
-- (any other difference, e.g. vetter maybe, model yes).
-- Example: SELECT * FROM vetting_disagreements WHERE kind = 'false_alarm' ORDER BY vetted_at DESC;
CREATE OR REPLACE VIEW vetting_disagreements AS
WITH newest AS (
    SELECT DISTINCT ON (candidate_id, vetter)
           vetting_id, candidate_id, field, star_id, vetter, label, reason, comment, created_at
    FROM vetting
    ORDER BY candidate_id, vetter, created_at DESC, vetting_id DESC
)
SELECT n.field, n.star_id, n.candidate_id, c.as_of_hjd, n.vetter, n.label, n.reason, n.comment,
       n.created_at AS vetted_at, v.model_sha256, v.verdict, v.binary_score,
       CASE WHEN n.label = 'yes' THEN 'missed'
            WHEN n.label = 'no' AND v.verdict = 'yes' THEN 'false_alarm'
            ELSE 'other' END AS kind
FROM newest n
JOIN candidates c ON c.candidate_id = n.candidate_id
JOIN verdicts v ON v.candidate_id = n.candidate_id
WHERE v.verdict <> n.label;

GRANT SELECT ON vetting_disagreements TO lensnet_reader;
