-- A projection's batch reads the log with the plan PostgreSQL keeps for the statement instead of
-- planning it again at every call. Its plan is always the same (an ordered scan of the
-- `(transaction_id, position)` index from the checkpoint, with the batch's limit), but the cost
-- PostgreSQL estimates for it without the checkpoint's values (a third of the log) is far above
-- the cost of a plan made with them (one page), so it chose a custom plan every time: 10,315
-- plans for 10,301 reads in a 20 s profile, 1.0 s of PostgreSQL's time against 0.65 s running
-- them. The setting holds for the rest of the batch's transaction only; the read models'
-- statements in it already ran with their kept plans.
create or replace function projection_batch_start(projection text,
                                                   out locked boolean, out last_xid bigint, out last_position bigint)
language plpgsql volatile as $$
begin
    locked := pg_try_advisory_xact_lock(hashtext('projection:' || projection));
    if not locked then
        return;
    end if;
    perform set_config('search_path', 'read, public', true);
    perform set_config('plan_cache_mode', 'force_generic_plan', true);
    select c.last_xid, c.last_position into last_xid, last_position
      from projection_checkpoint c where c.name = projection;
end
$$;
