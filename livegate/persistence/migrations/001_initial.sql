-- livegate schema, version 1: the publication archive and the transactional outbox.
-- Runs with search_path set to the configured schema (default "livegate").

CREATE TABLE publications (
    channel     text        NOT NULL,
    epoch       text        NOT NULL,
    "offset"    bigint      NOT NULL CHECK ("offset" > 0),
    data        jsonb       NOT NULL,
    info        jsonb,
    tags        jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, epoch, "offset")
);
-- Retention by age walks this index in small batches.
CREATE INDEX publications_created_at ON publications (created_at);

CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    method      text        NOT NULL,
    payload     jsonb       NOT NULL,
    partition   integer     NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_partition_id ON outbox (partition, id);

CREATE TABLE outbox_dead (
    id          bigint      PRIMARY KEY,
    method      text        NOT NULL,
    payload     jsonb,
    partition   integer     NOT NULL,
    error       text        NOT NULL,
    created_at  timestamptz NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now()
);

-- Wake consumers as soon as a backend's transaction commits (NOTIFY is delivered on commit).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.outbox', NEW.partition::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION outbox_notify();
