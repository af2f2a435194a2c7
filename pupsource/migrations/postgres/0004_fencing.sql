-- Fencing tokens: every claim of a partition takes its epoch from this sequence, so an
-- (owner, epoch) pair never repeats, even after checkpoint rows were deleted and created
-- again (a rebuild, a partition count that comes back). `{checkpoints}` is replaced by the
-- validated table name. Idempotent: every statement may run again on an existing schema.

CREATE SEQUENCE IF NOT EXISTS "{checkpoints}_epoch_seq";

-- Past every epoch stored before the sequence existed (and never back).
SELECT setval('"{checkpoints}_epoch_seq"', GREATEST(
    (SELECT COALESCE(max(epoch), 0) FROM "{checkpoints}"),
    (SELECT last_value FROM "{checkpoints}_epoch_seq")));
