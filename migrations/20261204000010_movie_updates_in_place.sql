-- A rent or a return changes a movie's availability, rental count, version and revision: no
-- column an index holds, once availability is no index's condition. With room left on each page,
-- PostgreSQL then updates such a row in place (a heap-only tuple) instead of adding an entry to
-- every index of the table, the trigram index of the movie's whole text among them. The listing
-- of available movies (the default filter) walks the listing index and skips rented movies.
drop index read.movie_listing_available;
alter table read.movie set (fillfactor = 80);
