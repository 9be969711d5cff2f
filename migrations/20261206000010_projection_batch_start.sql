-- The start of a projection's batch in one round trip: the projection's lock, the read models'
-- `search_path` for the rest of the transaction, and the checkpoint. A function, because the
-- checkpoint must be read after the lock is held: a plain statement reads with the snapshot it
-- took before it locked, and could see the checkpoint as it was before another process's batch
-- that committed in between. Each statement of a volatile PL/pgSQL function takes a new snapshot.
create function projection_batch_start(projection text,
                                       out locked boolean, out last_xid bigint, out last_position bigint)
language plpgsql volatile as $$
begin
    locked := pg_try_advisory_xact_lock(hashtext('projection:' || projection));
    if not locked then
        return;
    end if;
    perform set_config('search_path', 'read, public', true);
    select c.last_xid, c.last_position into last_xid, last_position
      from projection_checkpoint c where c.name = projection;
end
$$;
