-- Every field run marks the runs of its field that a dead process left `running` as abandoned
-- (publish::abandon_running). Without an index on the few running rows, that look-up scanned all
-- of the field's runs at every replay step, growing with the season.
CREATE INDEX IF NOT EXISTS runs_running ON runs (field, kind) WHERE status = 'running';
