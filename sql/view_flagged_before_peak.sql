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
