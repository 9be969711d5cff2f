-- Email notifications: the outbox, the customers' preferences and password-reset tokens.

-- The outbox: one row per email. Rows for events of the log are inserted by the notifications
-- projection in the transaction that moves its checkpoint; `welcome` and `password_reset` rows in
-- the account's own transaction. A row holds ids and the facts of its trigger (times, amounts),
-- never an address: the sender reads the recipient from the account when it sends.
create table notification (
    id uuid primary key,
    kind text not null check (kind in ('welcome', 'rental_receipt', 'return_receipt',
                                       'payment_receipt', 'overdue_reminder', 'password_reset')),
    user_id uuid not null,
    rental_id uuid,
    -- What caused it: the event's id (or the account's id for `welcome`, the reset request's id
    -- for `password_reset`); with `seq`, the reminder's number, unique per kind.
    trigger_id uuid not null,
    seq smallint not null default 1,
    data jsonb not null default '{}',
    state text not null default 'pending' check (state in ('pending', 'sent', 'failed', 'skipped')),
    attempts integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    last_error text,
    created_at timestamptz not null default now(),
    sent_at timestamptz,
    -- A password reset's token, until the email leaves the queue (then null): the reset table
    -- itself holds only its hash.
    secret text,
    unique (trigger_id, kind, seq)
);
create index notification_due on notification (next_attempt_at) where state = 'pending';
create index notification_pending_order on notification (created_at, id) where state = 'pending';
create index notification_newest on notification (created_at desc, id desc);
create index notification_user on notification (user_id, kind, created_at);

-- The queue as a whole: while the SMTP server cannot be reached, no sender claims anything
-- before `paused_until`, so that the queue goes out in order once the server answers.
create table notification_queue (
    id boolean primary key default true check (id),
    paused_until timestamptz not null
);

-- What a customer wants to hear; no row means both on.
create table notification_preferences (
    user_id uuid primary key references users (user_id) on delete cascade,
    receipts boolean not null default true,
    reminders boolean not null default true
);

-- Password-reset tokens, stored only as their SHA-256; one use, an hour, the newest voids the
-- older ones (`used_at` set).
create table password_resets (
    id uuid primary key,
    token_hash bytea not null unique,
    user_id uuid not null references users (user_id) on delete cascade,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at timestamptz
);
create index password_resets_user on password_resets (user_id) where used_at is null;
create index password_resets_expiry on password_resets (expires_at);

-- Overdue reminders after the first are timers of their own (every 3 days, at most 3 reminders).
alter table deadline drop constraint deadline_kind_check;
alter table deadline add constraint deadline_kind_check check (kind in ('overdue', 'reminder'));
