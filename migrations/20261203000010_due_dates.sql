-- Due dates, overdue rentals and periodic jobs.

-- Durable timers. A row is written in the same transaction as the event that sets it (the
-- `RentalOpened` append writes the rental's `overdue` timer) and deleted in the same transaction
-- as the event that makes it moot (the `RentalClosed` append) or the one it fires
-- (`RentalOverdue`). Schedulers in every `serve`/`worker` process claim due rows with
-- `for update skip locked`, so each fires in one process, once.
create table deadline (
    stream_id text not null,
    kind text not null check (kind in ('overdue')),
    due_at timestamptz not null,
    created_at timestamptz not null default now(),
    primary key (stream_id, kind)
);
create index deadline_due on deadline (due_at);

-- Every rental opened before this migration is still due 7 days after it started (the loan of
-- that time, as `RentalOpened` 1.0 is upcast); the ones not yet closed get their timer now.
insert into deadline (stream_id, kind, due_at)
select o.aggregate_id, 'overdue', (o.payload->>'rented_at')::timestamptz + interval '7 days'
  from events o
 where o.aggregate_type = 'rental' and o.event_type = 'RentalOpened'
   and not exists (select 1 from events c
                    where c.aggregate_type = 'rental' and c.aggregate_id = o.aggregate_id
                      and c.event_type = 'RentalClosed')
on conflict do nothing;

-- The due-date scheduler's own progress, for `/api/v1/admin/projections`: the last
-- `RentalOverdue` it appended and its last error while failing.
create table scheduler_status (
    name text primary key,
    last_position bigint not null default 0,
    updated_at timestamptz,
    last_error text,
    failing_since timestamptz
);

-- Periodic jobs: one row each, claimed with `for update skip locked` by one process at a time.
create table job (
    name text primary key,
    every_seconds integer not null check (every_seconds > 0),
    next_run_at timestamptz not null default now(),
    last_run_at timestamptz,
    last_outcome text
);

-- The rental status read model gains the due time and the due time it passed.
alter table read.rental add column due_at timestamptz, add column overdue_at timestamptz;
create index rental_overdue on read.rental (rented_at desc, rental_id desc)
    where status = 'active' and overdue_at is not null;
-- Rows the projection made from a `RentalOpened` 1.0 it had already applied get the due time a
-- replay gives them (rented_at + 7 days, the revision of that event at least), so `verify` finds
-- the live table equal to a replay; later events fill the others as they are applied.
update read.rental r
   set due_at = (o.payload->>'rented_at')::timestamptz + interval '7 days',
       revision = greatest(r.revision, o.position)
  from events o, projection_checkpoint c
 where o.aggregate_type = 'rental' and o.aggregate_id = r.rental_id::text
   and o.event_type = 'RentalOpened' and c.name = 'rentals'
   and (o.transaction_id::text::bigint, o.position) <= (c.last_xid, c.last_position);

-- Analytics: when a rental went overdue, and per UTC day (of the due time) and movie, how many
-- rentals went overdue.
alter table read.analytics_rental add column overdue_at timestamptz;
alter table read.analytics_movie_day add column overdues integer not null default 0;
