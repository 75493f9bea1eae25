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
