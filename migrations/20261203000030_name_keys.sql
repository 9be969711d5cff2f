-- Names compare alike everywhere (API.md): usernames, emails and category names are unique, and
-- looked up, by a key the application computes (NFKC, full case folding, NFKC again) and stores
-- beside the name, no longer by lower(), which depends on the database's locale (the C locale
-- folds only ASCII) and disagreed with the application's own folding (final sigma, dotted İ).
--
-- SQL cannot compute that key (normalize() exists, but its only case folding is lower()), so
-- this migration adds the key columns empty, with unique indexes on them (nulls never collide).
-- The application fills every key right after migrating (`moviestore migrate`, or a start that
-- migrates), before it serves. Where existing names now share a key, one row keeps it (the
-- account that could sign in by that name before, else the oldest row) and the others keep a null
-- key: nothing is deleted, and each such pair is named in a warning at every start until an
-- operator renames one of them (README, ADR 22). Stop processes of older releases before
-- migrating: they write no keys, and the lower() indexes are gone.

alter table users add column username_key text, add column email_key text;
drop index users_username;
drop index users_email;
create unique index users_username_key on users (username_key);
create unique index users_email_key on users (email_key);

alter table category_lookup add column name_key text;
drop index category_lookup_name;
create unique index category_lookup_name_key on category_lookup (name_key);

-- The read model looks categories up by name and lists them by name: by the same key, not unique
-- there (the lookup table above is what refuses a duplicate).
alter table read.category add column name_key text;
drop index read.category_name;
create index category_name_key on read.category (name_key, category_id);

-- Which Unicode tables computed the stored keys (one row): keys computed with other tables are
-- computed again at the next migration.
create table name_key_version (
    singleton boolean primary key default true check (singleton),
    version text not null,
    computed_at timestamptz not null default now()
);

-- login_failures.username now holds the key of the name tried. Rows written before hold the old
-- lower-cased name; they leave the 5-minute window soon and are purged.
