-- Fleet's initial schema: prospects, the message log, delivery statuses, outbound send state and
-- automatic-reply dedup. Everything lives in the database's default schema (CONTRACT.md).

-- One row per (tenant, contact): the CRM view of a conversation.
CREATE TABLE prospects (
    tenant               text        NOT NULL CHECK (char_length(tenant) BETWEEN 1 AND 64),
    contact              text        NOT NULL CHECK (char_length(contact) BETWEEN 1 AND 256),
    display_name         text,
    first_seen_at        timestamptz NOT NULL,
    last_seen_at         timestamptz NOT NULL,
    last_message_at      timestamptz,
    last_message_preview text,
    -- Messages stored for this prospect; incremented only by newly inserted message rows,
    -- in the same statement that inserts them, so a redelivery never counts twice.
    message_count        bigint      NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    unread_count         bigint      NOT NULL DEFAULT 0 CHECK (unread_count >= 0),
    stage                text        NOT NULL DEFAULT 'new',
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, contact)
);

-- The inbound and outbound message log.
CREATE TABLE messages (
    id                  bigserial   PRIMARY KEY,
    tenant              text        NOT NULL CHECK (char_length(tenant) BETWEEN 1 AND 64),
    contact             text        NOT NULL CHECK (char_length(contact) BETWEEN 1 AND 256),
    provider            text        NOT NULL CHECK (provider IN ('meta', 'twilio')),
    provider_message_id text        NOT NULL CHECK (char_length(provider_message_id) BETWEEN 1 AND 256),
    direction           text        NOT NULL CHECK (direction IN ('in', 'out')),
    kind                text        NOT NULL,
    body                text,
    media               jsonb,
    sent_at             timestamptz NOT NULL,
    received_at         timestamptz NOT NULL DEFAULT now(),
    -- Delivery status of outbound messages: sent < delivered < read, failed terminal (highest rank).
    status              text,
    status_rank         smallint    NOT NULL DEFAULT -1,
    status_at           timestamptz,
    error               text,
    -- Deduplication key: a provider redelivery or a queue redelivery inserts nothing.
    CONSTRAINT messages_provider_message_id_key UNIQUE (tenant, provider_message_id)
);

-- Conversation views: a prospect's messages, newest first.
CREATE INDEX messages_conversation_idx ON messages (tenant, contact, sent_at DESC);

-- The authority on delivery statuses, keyed by provider message id, merged monotonically.
-- A status can arrive before the message row it is about exists (the outbound worker records
-- the sent message after the provider answered, and the status webhook can be faster); it waits
-- here and is copied onto the message row when that row is inserted.
CREATE TABLE message_status (
    tenant              text        NOT NULL,
    provider_message_id text        NOT NULL,
    status              text        NOT NULL CHECK (status IN ('queued', 'sent', 'delivered', 'read', 'failed')),
    status_rank         smallint    NOT NULL,
    status_at           timestamptz,
    error               text,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, provider_message_id)
);

-- Send state of every outbound reply, keyed by its queue job id.
CREATE TABLE outbound_messages (
    job_id              text        PRIMARY KEY,
    tenant              text        NOT NULL,
    provider            text        NOT NULL CHECK (provider IN ('meta', 'twilio')),
    recipient           text        NOT NULL,
    body                text,
    origin              text        NOT NULL DEFAULT '',
    state               text        NOT NULL CHECK (state IN ('queued', 'sent', 'failed')),
    attempts            integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error          text,
    provider_message_id text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX outbound_messages_tenant_created_idx ON outbound_messages (tenant, created_at DESC);

-- Automatic replies that must happen once per prospect ever (the welcome); the trigger is the
-- provider message id that caused it, so a redelivery of that message re-enqueues the same
-- reply (deduplicated by the queue's idempotency key) and no other message ever does.
CREATE TABLE auto_replies_sent (
    tenant                      text        NOT NULL,
    contact                     text        NOT NULL,
    rule                        text        NOT NULL,
    trigger_provider_message_id text        NOT NULL,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, contact, rule)
);
