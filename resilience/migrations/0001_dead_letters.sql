-- Dead letters: one row a letter, for every queue. Times are milliseconds since the Unix
-- epoch; claims run on the database's clock.
CREATE TABLE IF NOT EXISTS keel_dead_letters (
    id                BIGSERIAL PRIMARY KEY,
    queue             TEXT     NOT NULL,
    key               TEXT     NOT NULL,
    payload           BYTEA    NOT NULL,
    class             TEXT     NOT NULL,
    message           TEXT     NOT NULL,
    attempts          BIGINT   NOT NULL,
    first_failed_at   BIGINT   NOT NULL,
    last_failed_at    BIGINT   NOT NULL,
    correlation_id    TEXT,
    source            TEXT     NOT NULL,
    enqueued_at       BIGINT   NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT,
    replay_failures   BIGINT   NOT NULL DEFAULT 0,
    last_replay_error TEXT,
    last_replay_at    BIGINT, -- microseconds: orders failures against replay starts
    claim_token       TEXT,
    claimed_until     BIGINT
);
CREATE INDEX IF NOT EXISTS keel_dead_letters_by_queue ON keel_dead_letters (queue, id);
