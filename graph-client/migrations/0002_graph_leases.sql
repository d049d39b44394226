-- Leases: one holder at a time per name (the fleet's subscription renewer), on the
-- database's clock.
CREATE TABLE IF NOT EXISTS keel_graph_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
