-- One star's verdicts across models and time. $1 = star_id.
SELECT field, star_id, as_of_hjd, candidate_id, model_sha256, verdict, binary_score, first_flagged_hjd, run_id
FROM star_verdict_history
WHERE star_id = $1
ORDER BY model_sha256, as_of_hjd
