-- Issue 14, `user.deleted`: the user is retired at Apple (`POST /users/retire`) at every account
-- where it is registered, once its licenses there are released. `retiring` while Apple works on
-- the retirement (`event_id` names it), `retired` (with `retired_at`) when Apple confirmed. A
-- retired user that gets a user license again is registered again (`users/create`) and is
-- `registered` again (`retired_at` cleared). The work itself is a `jobs` row of kind
-- `retire_user` (payload `{"client_user_id": …}`, dedupe key per account and user).
ALTER TABLE apple_users ADD COLUMN retired_at timestamptz;
ALTER TABLE apple_users DROP CONSTRAINT apple_users_status_check;
ALTER TABLE apple_users ADD CONSTRAINT apple_users_status_check
    CHECK (status IN ('registering', 'registered', 'retiring', 'retired', 'failed'));
