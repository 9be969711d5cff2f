-- A rental's row changes four times (returned, charged, paid, and its due time when the rental's
-- stream opens). `status` was the condition of two partial indexes, so none of those updates could
-- be made in place: PostgreSQL added an entry to every index of the table for each. The balance a
-- customer owes now walks the customer's rentals (`rental_customer_recent`), and the overdue
-- listing's index is conditioned on a stored flag that changes only when a rental goes overdue
-- and when an overdue rental comes back. With room left on each page, every other update is a
-- heap-only tuple.
drop index read.rental_customer_due;
drop index read.rental_overdue;
alter table read.rental
    add column overdue_open boolean not null
        generated always as (status = 'active' and overdue_at is not null) stored;
create index rental_overdue on read.rental (rented_at desc, rental_id desc) where overdue_open;
alter table read.rental set (fillfactor = 80);

-- The analytics rows of a rental change the same four times; no index holds what changes.
alter table read.analytics_rental set (fillfactor = 80);

-- A return sets the rental lookup's `returned_at`, which no index holds: in place too, given room.
alter table rental_lookup set (fillfactor = 80);
