-- keel-graph-client's state in PostgreSQL: delta links and subscriptions, one row per
-- key, each written whole.
CREATE TABLE IF NOT EXISTS keel_graph_state (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
