-- pgbench script: one event-shaped row (a MovieRented of a fresh stream) per transaction, into a
-- copy of the events table with the same columns, defaults, identity and indexes.
insert into bench_append (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, event_id)
values ('movie', gen_random_uuid()::text, 1, 'MovieRented', '1.0',
  jsonb_build_object('rental_id', gen_random_uuid(), 'rented_at', now(), 'customer_id', gen_random_uuid()),
  jsonb_build_object('actor_id', gen_random_uuid(), 'request_id', gen_random_uuid(), 'causation_id', null,
    'correlation_id', gen_random_uuid()),
  gen_random_uuid());
