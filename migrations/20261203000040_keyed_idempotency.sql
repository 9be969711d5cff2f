-- Idempotency records are now compared through a digest keyed with the deployment's secret, and
-- their answers sealed with a key derived from it (ADR 23). The records written before hold
-- unkeyed SHA-256 digests of bodies that may carry passwords, and answers sealed with a key any
-- holder of the request can derive: this version cannot compare them, and keeping them for the
-- rest of their day would keep the exposure this closes. They are at most 24 hours of keys; a
-- client retrying across the upgrade has its request run again, where the domain refuses a
-- repeat (a rent of a rented movie, a second payment, a taken name).
delete from idempotency;
