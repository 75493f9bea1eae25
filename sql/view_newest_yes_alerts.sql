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
