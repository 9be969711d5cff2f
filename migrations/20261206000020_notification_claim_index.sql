-- The claim walks the pending rows in the order they were queued (`notification_pending_order`)
-- and skips those whose next attempt is later; no statement needs pending rows by the time of
-- their next attempt. With this index, PostgreSQL could take it for the claim (then sort the whole
-- queue) or for a single row's update whenever its statistics said the queue was empty, and every
-- claim paid for it. The lease moves only `next_attempt_at`, which no index holds now: with room
-- left on each page, that update is made in place (a heap-only tuple).
drop index notification_due;
alter table notification set (fillfactor = 80);
