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
