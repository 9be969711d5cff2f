-- pgbench script: one row of the appended events by its unique position (an index lookup, as a
-- primary-key select is).
\set p random(1, :rows)
select payload, metadata from bench_append where position = :p;
