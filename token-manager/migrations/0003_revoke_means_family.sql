-- keel-token-manager: revoking a token revokes its family (RFC 7009 §2.1), so a token in
-- state 2 (revoked alone, by versions before this migration) is reuse while its family is
-- live. Otherwise as migration 2: one statement, one transaction, rows locked.
-- Locks the family's and the token's rows, so concurrent rotations of a family serialize;
-- the commit is synchronous whatever the server's default.
CREATE OR REPLACE FUNCTION keel_rotate_refresh_token(
    p_presented BYTEA, p_successor BYTEA, p_sealed BYTEA,
    p_now BIGINT, p_grace BIGINT, p_idle BIGINT
) RETURNS TABLE (
    outcome TEXT, id TEXT, subject TEXT, client_id TEXT, created_at BIGINT,
    absolute_expiry BIGINT, idle_expiry BIGINT, last_used_at BIGINT, revoked_at BIGINT,
    successor BYTEA, sealed_successor BYTEA
) LANGUAGE plpgsql AS $$
DECLARE
    f keel_refresh_families%ROWTYPE;
    t keel_refresh_tokens%ROWTYPE;
    successor_state SMALLINT;
BEGIN
    PERFORM set_config('synchronous_commit', 'on', true);
    SELECT fam.* INTO f FROM keel_refresh_tokens tok
        JOIN keel_refresh_families fam ON fam.id = tok.family_id
        WHERE tok.hash = p_presented FOR UPDATE OF fam, tok;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown'::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::BIGINT,
            NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::BYTEA, NULL::BYTEA;
        RETURN;
    END IF;
    SELECT * INTO t FROM keel_refresh_tokens WHERE hash = p_presented;
    IF f.revoked_at IS NOT NULL THEN
        outcome := 'revoked';
    ELSIF p_now >= f.absolute_expiry OR p_now >= f.idle_expiry THEN
        outcome := 'expired';
    ELSIF t.state = 2 THEN
        f.revoked_at := p_now;
        UPDATE keel_refresh_families SET revoked_at = p_now WHERE keel_refresh_families.id = f.id;
        outcome := 'reuse';
    ELSIF t.state = 0 THEN
        f.last_used_at := p_now;
        f.idle_expiry := LEAST(p_now + p_idle, f.absolute_expiry);
        UPDATE keel_refresh_tokens SET state = 1, successor = p_successor, rotated_at = p_now,
            sealed_successor = p_sealed WHERE hash = p_presented;
        INSERT INTO keel_refresh_tokens (hash, family_id, generation, issued_at, state)
            VALUES (p_successor, f.id, t.generation + 1, p_now, 0);
        UPDATE keel_refresh_families SET idle_expiry = f.idle_expiry, last_used_at = p_now
            WHERE keel_refresh_families.id = f.id;
        outcome := 'rotated';
    ELSE
        SELECT state INTO successor_state FROM keel_refresh_tokens WHERE hash = t.successor;
        IF successor_state = 0 AND p_now - t.rotated_at < p_grace THEN
            outcome := 'retried';
        ELSE
            f.revoked_at := p_now;
            UPDATE keel_refresh_families SET revoked_at = p_now WHERE keel_refresh_families.id = f.id;
            outcome := 'reuse';
        END IF;
    END IF;
    RETURN QUERY SELECT outcome, f.id, f.subject, f.client_id, f.created_at, f.absolute_expiry,
        f.idle_expiry, f.last_used_at, f.revoked_at, t.successor, t.sealed_successor;
END;
$$;
