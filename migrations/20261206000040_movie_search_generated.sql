-- A movie's search text (every search word must occur in it) is computed by PostgreSQL from the
-- row itself, so each writer gets the same text without sending it: the live upserts, and a
-- rebuild's bulk copy into its shadow table, which cannot compute a column as it goes (its rows
-- come in PostgreSQL's binary format, and `lower` must be PostgreSQL's own, for the words a search
-- lowers with it to match). Dropping the column drops its trigram index; it is made again.
alter table read.movie drop column search;
alter table read.movie add column search text not null
    generated always as (lower(title || ' ' || storyline || ' ' || coalesce(director, ''))) stored;
create index movie_search on read.movie using gin (search gin_trgm_ops);
