-- A store's catalog: items, blob users, per-domain counters, and the writer's last commit.
-- `{schema}` is the catalog's schema (one per store). Answers are ordered with
-- COLLATE "C" (byte order, as Rust sorts strings), whatever the database's collation.

CREATE TABLE {schema}.items (
    domain     text NOT NULL,
    id         text NOT NULL,
    name       text NOT NULL,
    data_type  text NOT NULL,
    size       bigint NOT NULL CHECK (size BETWEEN 0 AND 4294967295),
    -- The Merkle root of the content (64 lowercase hex): the blob file's name.
    hash       text NOT NULL,
    -- String keys to string values.
    properties jsonb NOT NULL DEFAULT '{}'::jsonb,
    stored_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, id)
);
CREATE INDEX items_by_name ON {schema}.items (domain, name);
CREATE INDEX items_by_type ON {schema}.items (domain, data_type);
-- Containment (`properties @> '{"k": "v"}'`), the only property query.
CREATE INDEX items_by_properties ON {schema}.items USING gin (properties jsonb_path_ops);

-- How many items use each blob file; a blob whose count reaches zero goes.
CREATE TABLE {schema}.blobs (
    domain text NOT NULL,
    root   text NOT NULL,
    users  bigint NOT NULL,
    PRIMARY KEY (domain, root)
);

-- Items and content bytes per domain, kept with every change: usage costs no scan.
CREATE TABLE {schema}.domains (
    domain text PRIMARY KEY,
    items  bigint NOT NULL DEFAULT 0,
    bytes  bigint NOT NULL DEFAULT 0
);

-- One row: the marker of the writer's last commit, written in the same transaction, so
-- that a writer whose connection dropped during COMMIT learns whether it committed.
CREATE TABLE {schema}.writer (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_commit text
);
INSERT INTO {schema}.writer (only_row, last_commit) VALUES (true, NULL);
