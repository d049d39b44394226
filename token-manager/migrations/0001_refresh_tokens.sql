-- keel-token-manager: refresh-token families and their tokens.
-- Times are milliseconds since the Unix epoch. Tokens are stored only as SHA-256 hashes.
CREATE TABLE keel_refresh_families (
    id              TEXT PRIMARY KEY,
    subject         TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    absolute_expiry BIGINT NOT NULL,
    idle_expiry     BIGINT NOT NULL,
    last_used_at    BIGINT NOT NULL,
    revoked_at      BIGINT
);
CREATE INDEX keel_refresh_families_subject ON keel_refresh_families (subject);

CREATE TABLE keel_refresh_tokens (
    hash             BYTEA PRIMARY KEY,
    family_id        TEXT NOT NULL REFERENCES keel_refresh_families (id) ON DELETE CASCADE,
    generation       INTEGER NOT NULL,
    issued_at        BIGINT NOT NULL,
    -- 0 active, 1 rotated, 2 revoked
    state            SMALLINT NOT NULL,
    successor        BYTEA,
    rotated_at       BIGINT,
    -- the successor token, AES-256-GCM sealed, for retries within the grace period
    sealed_successor BYTEA
);
CREATE INDEX keel_refresh_tokens_family ON keel_refresh_tokens (family_id);
