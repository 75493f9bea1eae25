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
