-- Views for follow-up coordinators, readable by lensnet_reader. GENERATED from sql/view_*.sql
-- (each view is the exact text of its file, in file-name order) by tests/it/publish.rs:
-- `LENSNET_BLESS=1 cargo test -p lensnet --test it publish::migration_views_match_sql_files`
-- rewrites it. Edit sql/, not this file; once applied somewhere, a change needs a new migration.

-- flagged_before_peak: events that a model first called "yes" before their peak. The peak is the
-- t0 of the EventFinder point-lens grid fit (kind pspl_grid) of the star's latest candidate that
-- has one (the estimate with the most data); first_flagged_hjd is the earliest as_of_hjd of a
-- "yes" from that model; lead_days = peak_hjd - first_flagged_hjd > 0.
-- Example: SELECT * FROM flagged_before_peak ORDER BY lead_days DESC;
CREATE OR REPLACE VIEW flagged_before_peak AS
WITH first_yes AS (
    SELECT c.field, c.star_id, v.model_sha256, min(c.as_of_hjd) AS first_flagged_hjd
    FROM verdicts v
    JOIN candidates c ON c.candidate_id = v.candidate_id
    WHERE v.verdict = 'yes'
    GROUP BY c.field, c.star_id, v.model_sha256
), latest_fit AS (
    SELECT DISTINCT ON (c.field, c.star_id)
           c.field, c.star_id, c.candidate_id, c.as_of_hjd, f.t0, f.teff
    FROM candidates c
    JOIN fits f ON f.candidate_id = c.candidate_id AND f.kind = 'pspl_grid'
    WHERE f.t0 IS NOT NULL
    ORDER BY c.field, c.star_id, c.as_of_hjd DESC
)
SELECT y.field, y.star_id, y.model_sha256, y.first_flagged_hjd,
       l.t0 AS peak_hjd, l.t0 - y.first_flagged_hjd AS lead_days, l.teff,
       l.candidate_id AS fit_candidate_id, l.as_of_hjd AS fit_as_of_hjd
FROM first_yes y
JOIN latest_fit l ON l.field = y.field AND l.star_id = y.star_id
WHERE l.t0 > y.first_flagged_hjd;

-- needs_human: stars whose newest verdict is "maybe" (binary score between threshold_recall and
-- threshold_purity): kept at the high-recall operating point, a human should look. The newest
-- verdict is that of the star's latest candidate, from the most recently written model.
-- Example: SELECT * FROM needs_human WHERE field = 'BLG14' ORDER BY binary_score DESC;
CREATE OR REPLACE VIEW needs_human AS
SELECT newest.*
FROM (
    SELECT DISTINCT ON (c.field, c.star_id)
           c.field, c.star_id, c.candidate_id, c.as_of_hjd, c.sites,
           v.model_sha256, v.verdict, v.binary_score, v.p_yes, v.p_maybe, v.p_no,
           v.threshold_purity, v.threshold_recall, v.run_id, v.created_at AS verdict_created_at, v.evidence
    FROM verdicts v
    JOIN candidates c ON c.candidate_id = v.candidate_id
    ORDER BY c.field, c.star_id, c.as_of_hjd DESC, v.created_at DESC
) AS newest
WHERE newest.verdict = 'maybe';

-- newest_yes_alerts: the newest "yes" alert of every star, one row per (field, star_id): its
-- latest candidate that a model called "yes" (high-purity operating point), with the scores and
-- the evidence. Example: SELECT * FROM newest_yes_alerts WHERE field = 'BLG14' ORDER BY as_of_hjd DESC;
CREATE OR REPLACE VIEW newest_yes_alerts AS
SELECT DISTINCT ON (c.field, c.star_id)
       c.field, c.star_id, c.candidate_id, c.as_of_hjd, c.sites,
       v.model_sha256, v.binary_score, v.p_yes, v.p_maybe, v.p_no, v.threshold_purity,
       v.first_flagged_hjd, v.run_id, v.created_at AS verdict_created_at, v.evidence
FROM verdicts v
JOIN candidates c ON c.candidate_id = v.candidate_id
WHERE v.verdict = 'yes'
ORDER BY c.field, c.star_id, c.as_of_hjd DESC, v.created_at DESC;

-- star_verdict_history: every verdict on every candidate of a star, across models (one row per
-- candidate and model_sha256). Example:
-- SELECT * FROM star_verdict_history WHERE star_id = 'BLG14-K-0042' ORDER BY model_sha256, as_of_hjd;
CREATE OR REPLACE VIEW star_verdict_history AS
SELECT c.field, c.star_id, c.as_of_hjd, c.candidate_id, c.sites,
       v.model_sha256, v.verdict, v.binary_score, v.p_yes, v.p_maybe, v.p_no,
       v.threshold_purity, v.threshold_recall, v.first_flagged_hjd,
       v.run_id, v.replay_id, v.created_at AS verdict_created_at
FROM verdicts v
JOIN candidates c ON c.candidate_id = v.candidate_id;

GRANT SELECT ON flagged_before_peak, needs_human, newest_yes_alerts, star_verdict_history TO lensnet_reader;
