-- Identity is plain relational data, not events: uniqueness is a constraint, credentials can be
-- rehashed, and a person's data can be erased.
create table users (
    user_id uuid primary key,
    username text not null,
    email text,
    password_hash text not null,
    role text not null check (role in ('customer', 'admin', 'auditor', 'analyst')),
    created_at timestamptz not null default now()
);
create unique index users_username on users (lower(username));
create unique index users_email on users (lower(email)) where email is not null;

-- Opaque tokens are stored only as their SHA-256.
create table tokens (
    token_hash bytea primary key,
    user_id uuid not null references users (user_id) on delete cascade,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index tokens_user on tokens (user_id);
create index tokens_expiry on tokens (expires_at);

-- Failed logins per (username, client address), so the throttle holds across processes.
create table login_failures (
    username text not null,
    client_addr text not null,
    failed_at timestamptz not null default now()
);
create index login_failures_key on login_failures (username, client_addr, failed_at);
