-- Analytics read models (projection `analytics`) and the read-only analyst role.
-- Like every read model, rows take their times from events and carry `revision` (the global
-- position of the last event that changed them) or `version` (the stream version), so a replay
-- writes identical rows.

-- Category names, from CategoryCreated / CategoryRenamed.
create table read.analytics_category (
    category_id uuid primary key,
    name text not null,
    created_at timestamptz not null,
    revision bigint not null
);

-- The movie dimension: current title and categories, from MovieAdded / MovieUpdated / MovieRetired.
create table read.analytics_movie (
    movie_id uuid primary key,
    title text not null,
    category_ids uuid[] not null,
    added_at timestamptz not null,
    retired_at timestamptz,
    version bigint not null
);

-- One row per rental: its interval (utilization) and its charge and payment (revenue).
create table read.analytics_rental (
    rental_id uuid primary key,
    movie_id uuid not null,
    rented_at timestamptz not null,
    returned_at timestamptz,
    charge_cents bigint,
    paid_cents bigint,
    revision bigint not null
);
create index analytics_rental_movie on read.analytics_rental (movie_id, rented_at);
create index analytics_rental_rented on read.analytics_rental (rented_at);

-- Per-day facts of one movie (UTC days): rentals started that day, and the charges assessed for
-- rentals returned that day with what has been paid of them.
create table read.analytics_movie_day (
    day date not null,
    movie_id uuid not null,
    rentals_started integer not null,
    charges integer not null,
    revenue_cents bigint not null,
    paid_cents bigint not null,
    primary key (day, movie_id)
);

-- The analyst role: may read schema `read`, nothing else. Roles are cluster-wide while every
-- database (each test database too) runs this migration, possibly at the same moment: create it
-- only when missing and tolerate a concurrent creation. Grants are per database. A connection
-- that may not create roles leaves the role to an operator.
do $$
begin
    begin
        if not exists (select from pg_roles where rolname = 'moviestore_analyst') then
            create role moviestore_analyst nologin;
        end if;
    exception
        when duplicate_object or unique_violation then null;
        when insufficient_privilege then
            raise notice 'cannot create role moviestore_analyst; an operator must create it and re-run the grants';
    end;
    if exists (select from pg_roles where rolname = 'moviestore_analyst') then
        grant usage on schema read to moviestore_analyst;
        grant select on all tables in schema read to moviestore_analyst;
        -- Tables later migrations create in `read`. A rebuild's tables are created in a shadow
        -- schema and moved into `read`, which default privileges do not cover: the rebuild copies
        -- the live table's grants onto its replacement.
        alter default privileges in schema read grant select on tables to moviestore_analyst;
    end if;
end
$$;
