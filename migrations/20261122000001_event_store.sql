-- The event store: the tables postgres-es reads streams from, extended with what the contract
-- needs (a global position, an event id, the writing transaction's id and the time of recording).
create table events (
    aggregate_type text not null,
    aggregate_id text not null,
    sequence bigint not null check (sequence >= 1),
    event_type text not null,
    event_version text not null,
    payload jsonb not null,
    metadata jsonb not null,
    position bigint generated always as identity,
    event_id uuid not null unique,
    transaction_id xid8 not null default pg_current_xact_id(),
    recorded_at timestamptz not null default clock_timestamp(),
    primary key (aggregate_type, aggregate_id, sequence)
);

-- The order projections read the log in, behind the horizon of running transactions.
create index events_transaction_position on events (transaction_id, position);
create unique index events_position on events (position);

-- One snapshot per aggregate, replaced as the stream grows. It is written in the same
-- transaction as the events it reflects, from the state the command already computed.
create table snapshots (
    aggregate_type text not null,
    aggregate_id text not null,
    last_sequence bigint not null check (last_sequence >= 1),
    current_snapshot bigint not null check (current_snapshot >= 1),
    payload jsonb not null,
    primary key (aggregate_type, aggregate_id)
);

-- Synchronous lookups, written in the append transaction (not read models):
-- category names, unique case-insensitively; a row also tells that a category id exists.
create table category_lookup (
    category_id uuid primary key,
    name text not null
);
create unique index category_lookup_name on category_lookup (lower(name));

-- Every rental, so that a return or a payment right after the rent finds it.
create table rental_lookup (
    rental_id uuid primary key,
    movie_id uuid not null,
    customer_id uuid not null,
    rented_at timestamptz not null,
    returned_at timestamptz
);
create index rental_lookup_customer on rental_lookup (customer_id);

-- Which live movies each category holds, so a category's `movie_count` is exact the moment a
-- command answers. Rows leave when the movie leaves the category or is retired.
create table category_movie_lookup (
    category_id uuid not null,
    movie_id uuid not null,
    primary key (category_id, movie_id)
);
create index category_movie_lookup_movie on category_movie_lookup (movie_id);
