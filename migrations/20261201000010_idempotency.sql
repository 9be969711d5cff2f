-- Idempotency records: one per (caller scope, Idempotency-Key), kept 24 hours.
-- A claim is in progress while `status` is null: `claim` names the request that holds it until
-- `lease_until`. The append transaction of the command it runs sets `position`, so a key whose
-- command appended is never run again. The final answer (`status`, `headers`, the sealed `body`)
-- is stored once the request has answered.
create table idempotency (
    scope text not null,
    key text not null,
    method text not null,
    path text not null,
    body_hash bytea not null,
    claim uuid not null,
    lease_until timestamptz not null,
    expires_at timestamptz not null,
    position bigint,
    status smallint,
    headers jsonb,
    nonce bytea,
    body bytea,
    created_at timestamptz not null default now(),
    primary key (scope, key)
);

create index idempotency_expires_at on idempotency (expires_at);
