-- Token revocations reach every process's token cache before the revoking request answers.
--
-- `token_revocations` holds one counter. Every transaction that revokes tokens or changes what a
-- token stands for (logout, password change, role change, erasure) increments it and notifies
-- channel `moviestore_auth` with `<counter> <user id>` in the same transaction. The row lock makes
-- the counter grow in commit order, so a process that has acknowledged N has seen every
-- revocation up to N.
create table token_revocations (
    singleton boolean primary key default true check (singleton),
    counter bigint not null
);
insert into token_revocations (counter) values (0);

-- A process that caches tokens is a member while its lease lasts. It joins after it LISTENs,
-- records the counter it joined at (`joined_at`: revocations up to it were committed before its
-- cache could hold anything), acknowledges each revocation after dropping the account's tokens,
-- and stops using its cache on its own clock before its lease ends here. A revoking request waits
-- until every member with a live lease that joined before its revocation has acknowledged it.
create table token_cache_members (
    member_id uuid primary key,
    joined_at bigint not null,
    acknowledged bigint not null,
    lease_until timestamptz not null
);
