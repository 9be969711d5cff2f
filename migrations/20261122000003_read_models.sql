-- The read side: projection checkpoints and the read models in schema `read`.
-- Read-model rows take every time from events and carry `revision`, the global position of the
-- last event that changed them, so a replay writes identical rows and caches can compare-and-set.

create extension if not exists pg_trgm;
create schema if not exists read;

-- Where each projection is in the log: the (transaction id, position) of the last event applied,
-- written in the same transaction as the read-model changes.
create table projection_checkpoint (
    name text primary key,
    last_xid bigint not null default 0,
    last_position bigint not null default 0,
    updated_at timestamptz,
    last_error text,
    failing_since timestamptz
);

-- Catalogue: categories with their count of live movies.
create table read.category (
    category_id uuid primary key,
    name text not null,
    movie_count integer not null default 0,
    revision bigint not null
);
create index category_name on read.category (lower(name));

-- Catalogue and details: one row per movie, retired ones included (details still answer).
create table read.movie (
    movie_id uuid primary key,
    title text not null,
    storyline text not null,
    director text,
    release_date date not null,
    rating_tenths smallint not null,
    category_ids uuid[] not null,
    category_names text[] not null,
    available boolean not null,
    retired boolean not null,
    times_rented bigint not null,
    version bigint not null,
    revision bigint not null,
    -- lower(title || storyline || director): every search word must occur in it.
    search text not null,
    added_at timestamptz not null,
    updated_at timestamptz not null
);
-- Listing order (title, id) over live movies, and over the available ones (the default filter).
create index movie_listing on read.movie (title, movie_id) where not retired;
create index movie_listing_available on read.movie (title, movie_id) where not retired and available;
-- Category filter: array containment.
create index movie_categories on read.movie using gin (category_ids);
-- Substring search: trigrams serve `like '%word%'` for words of 3+ characters.
create index movie_search on read.movie using gin (search gin_trgm_ops);

-- Rental status, per rental and per customer.
create table read.rental (
    rental_id uuid primary key,
    movie_id uuid not null,
    movie_title text not null,
    customer_id uuid not null,
    rented_at timestamptz not null,
    returned_at timestamptz,
    status text not null check (status in ('active', 'returned', 'charged', 'paid')),
    charge_days integer,
    charge_cents bigint,
    currency text,
    paid_at timestamptz,
    paid_cents bigint,
    revision bigint not null
);
create index rental_customer_recent on read.rental (customer_id, rented_at desc, rental_id desc);
create index rental_recent on read.rental (rented_at desc, rental_id desc);
create index rental_customer_due on read.rental (customer_id) where status = 'charged';

-- Movie titles as the rentals projection knows them (it never reads another projection's tables).
create table read.rental_movie (
    movie_id uuid primary key,
    title text not null
);
