-- The newest "yes" alerts of one field, newest first. $1 = field (e.g. 'BLG14'), $2 = how many.
SELECT field, star_id, candidate_id, as_of_hjd, binary_score, p_yes, first_flagged_hjd, model_sha256
FROM newest_yes_alerts
WHERE field = $1
ORDER BY as_of_hjd DESC, star_id
LIMIT $2
