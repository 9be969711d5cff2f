-- Fills `events` with a synthetic log for rebuild benchmarks: :movies movies in 10 categories,
-- each rented and returned :cycles times. Valid payloads, one stream version per event, times from
-- 2020 on. Total events: 10 + movies * (1 + 2 * cycles).
\set ON_ERROR_STOP on
begin;
insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, event_id)
select 'category', md5('category' || c)::uuid::text, 1, 'CategoryCreated', '1.0',
       jsonb_build_object('name', 'Category ' || c), '{}', gen_random_uuid()
  from generate_series(1, 10) c;

insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, event_id)
select 'movie', md5('movie' || m)::uuid::text, 1, 'MovieAdded', '1.0',
       jsonb_build_object(
         'title', 'Movie ' || m, 'storyline', 'The story of movie number ' || m || '.',
         'release_date', (date '1950-01-01' + (m % 25000))::text, 'rating', (m % 101) / 10.0,
         'director', 'Director ' || (m % 997),
         'category_ids', jsonb_build_array(md5('category' || (1 + m % 10))::uuid)),
       '{}', gen_random_uuid()
  from generate_series(1, :movies) m;

insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, event_id)
select 'movie', md5('movie' || m)::uuid::text, 2 + 2 * k + r,
       case r when 0 then 'MovieRented' else 'MovieReturned' end, '1.0',
       case r when 0 then jsonb_build_object(
                 'rental_id', md5('rental' || m || '-' || k)::uuid, 'customer_id', md5('customer' || (m % 5000))::uuid,
                 'rented_at', timestamptz '2020-01-01' + make_interval(days => 3 * k))
              else jsonb_build_object(
                 'rental_id', md5('rental' || m || '-' || k)::uuid, 'customer_id', md5('customer' || (m % 5000))::uuid,
                 'returned_at', timestamptz '2020-01-02' + make_interval(days => 3 * k)) end,
       '{}', gen_random_uuid()
  from generate_series(0, :cycles - 1) k, generate_series(1, :movies) m, generate_series(0, 1) r
 order by k, m, r;
commit;
analyze events;
