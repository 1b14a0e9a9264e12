// @generated automatically by Diesel CLI.

diesel::table! {
    account_distribution_entries (account_id, kind, value) {
        account_id -> Uuid,
        kind -> Text,
        value -> Text,
    }
}

diesel::table! {
    accounts (id) {
        id -> Uuid,
        space_id -> Text,
        name -> Text,
        priority -> Int4,
        location_uid -> Text,
        location_name -> Text,
        country_code -> Text,
        website_url -> Text,
        org_name -> Text,
        token_ciphertext -> Bytea,
        token_nonce -> Bytea,
        token_key_id -> Text,
        token_expires_at -> Timestamptz,
        status -> Text,
        status_reason -> Text,
        status_changed_at -> Timestamptz,
        throttled_until -> Nullable<Timestamptz>,
        apple_mdm_id -> Nullable<Text>,
        notification_token_hash -> Nullable<Bytea>,
        notify_on_removal -> Bool,
        new_assets_for_everyone -> Bool,
        when_unusable -> Text,
        last_full_sync_at -> Nullable<Timestamptz>,
        last_incremental_sync_at -> Nullable<Timestamptz>,
        assignments_version_id -> Nullable<Text>,
        delete_requested_at -> Nullable<Timestamptz>,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        assets_version_id -> Nullable<Text>,
        users_version_id -> Nullable<Text>,
        last_sync_attempt_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    activity_log (id) {
        id -> Int8,
        occurred_at -> Timestamptz,
        space_id -> Nullable<Text>,
        actor -> Text,
        action -> Text,
        account_id -> Nullable<Uuid>,
        assignment_id -> Nullable<Uuid>,
        subject -> Nullable<Text>,
        adam_id -> Nullable<Text>,
        pricing_param -> Nullable<Text>,
        rule -> Nullable<Text>,
        apple_event_id -> Nullable<Text>,
        request_id -> Nullable<Text>,
        details -> Jsonb,
        /// The assignment's version after the change the row records (rows about one).
        /// (`txid xid8`, the writing transaction, is not declared: diesel has no xid8 type;
        /// only raw SQL in `ledger::outbox` reads it.)
        version -> Nullable<Int8>,
    }
}

diesel::table! {
    apple_assignments (account_id, adam_id, pricing_param, license_type, target) {
        account_id -> Uuid,
        adam_id -> Text,
        pricing_param -> Text,
        license_type -> Text,
        target -> Text,
        first_seen_at -> Timestamptz,
        seen_at -> Timestamptz,
        seen_by_run -> Uuid,
    }
}

diesel::table! {
    apple_events (event_id) {
        event_id -> Text,
        account_id -> Uuid,
        kind -> Text,
        adam_id -> Nullable<Text>,
        pricing_param -> Nullable<Text>,
        requested -> Int4,
        status -> Text,
        failures -> Nullable<Jsonb>,
        polls -> Int4,
        submitted_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    apple_notifications (account_id, notification_id) {
        notification_id -> Text,
        account_id -> Uuid,
        received_at -> Timestamptz,
        rejection -> Nullable<Jsonb>,
    }
}

diesel::table! {
    apple_pace (token_key, slot) {
        token_key -> Bytea,
        slot -> Int4,
        free_at -> Timestamptz,
    }
}

diesel::table! {
    apple_users (account_id, client_user_id) {
        account_id -> Uuid,
        client_user_id -> Text,
        status -> Text,
        event_id -> Nullable<Text>,
        updated_at -> Timestamptz,
        retired_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    asset_list_reads (account_id) {
        account_id -> Uuid,
        read_at -> Timestamptz,
    }
}

diesel::table! {
    assets (account_id, adam_id, pricing_param) {
        account_id -> Uuid,
        adam_id -> Text,
        pricing_param -> Text,
        product_type -> Text,
        device_assignable -> Bool,
        revocable -> Bool,
        supported_platforms -> Array<Nullable<Text>>,
        apple_total -> Int4,
        apple_assigned -> Int4,
        apple_retired -> Int4,
        foreign_assigned -> Int4,
        held -> Int4,
        synced_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        vanished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    assignments (id) {
        id -> Uuid,
        space_id -> Text,
        account_id -> Uuid,
        adam_id -> Text,
        pricing_param -> Text,
        subject_id -> Uuid,
        license_type -> Text,
        state -> Text,
        rule -> Text,
        decision -> Jsonb,
        requested_by -> Text,
        reason -> Text,
        apple_event_id -> Nullable<Text>,
        batch_id -> Nullable<Uuid>,
        error -> Nullable<Jsonb>,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        revoked_by -> Nullable<Text>,
        revocation_reason -> Nullable<Text>,
        revocation_requested_at -> Nullable<Timestamptz>,
        revocation_request_id -> Nullable<Text>,
    }
}

diesel::table! {
    bulk_operation_items (operation_id, idx) {
        operation_id -> Uuid,
        idx -> Int4,
        subject_kind -> Text,
        subject_id -> Text,
    }
}

diesel::table! {
    bulk_operations (id) {
        id -> Uuid,
        space_id -> Text,
        action -> Text,
        assets -> Jsonb,
        selector -> Nullable<Jsonb>,
        license_type -> Text,
        reason -> Text,
        state -> Text,
        subjects -> Int4,
        total -> Int4,
        succeeded -> Int4,
        failed -> Int4,
        skipped -> Int4,
        next_index -> Int4,
        errors -> Jsonb,
        cancelled_by -> Nullable<Text>,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        requested_by -> Text,
        request_id -> Nullable<Text>,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    deployment (singleton) {
        singleton -> Bool,
        instance_id -> Uuid,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    distribution_policies (id) {
        id -> Uuid,
        space_id -> Text,
        adam_id -> Text,
        pricing_param -> Text,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        wait_for_license -> Bool,
    }
}

diesel::table! {
    drift_items (id) {
        id -> Int8,
        account_id -> Uuid,
        space_id -> Text,
        class -> Text,
        adam_id -> Text,
        pricing_param -> Text,
        license_type -> Nullable<Text>,
        target -> Nullable<Text>,
        assignment_id -> Nullable<Uuid>,
        since -> Timestamptz,
        found_by_run -> Uuid,
        details -> Jsonb,
    }
}

diesel::table! {
    drift_watermarks (account_id) {
        account_id -> Uuid,
        ledger_at -> Timestamptz,
        mirror_at -> Timestamptz,
        full_read -> Bool,
        assets_read -> Bool,
    }
}

diesel::table! {
    event_watermark (id) {
        id -> Bool,
        activity_id -> Int8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    event_sequences (space_id) {
        space_id -> Text,
        last -> Int8,
    }
}

diesel::table! {
    events (space_id, sequence) {
        space_id -> Text,
        sequence -> Int8,
        id -> Uuid,
        #[sql_name = "type"]
        type_ -> Text,
        api_version -> Text,
        occurred_at -> Timestamptz,
        recorded_at -> Timestamptz,
        activity_id -> Nullable<Int8>,
        data -> Jsonb,
    }
}

diesel::table! {
    idempotency_keys (space_id, caller, key) {
        space_id -> Text,
        caller -> Text,
        key -> Text,
        request_fingerprint -> Bytea,
        status_code -> Nullable<Int4>,
        response_body -> Nullable<Jsonb>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    jobs (id) {
        id -> Int8,
        kind -> Text,
        account_id -> Nullable<Uuid>,
        assignment_id -> Nullable<Uuid>,
        payload -> Jsonb,
        dedupe_key -> Nullable<Text>,
        state -> Text,
        run_at -> Timestamptz,
        attempts -> Int4,
        locked_by -> Nullable<Text>,
        locked_until -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        adam_id -> Nullable<Text>,
        pricing_param -> Nullable<Text>,
        license_type -> Nullable<Text>,
        dead_at -> Nullable<Timestamptz>,
        failures -> Int4,
    }
}

diesel::table! {
    lifecycle_events (id) {
        id -> Uuid,
        space_id -> Text,
        source -> Text,
        event_id -> Text,
        #[sql_name = "type"]
        type_ -> Text,
        subject_kind -> Text,
        subject_id -> Text,
        occurred_at -> Timestamptz,
        data -> Jsonb,
        effect -> Text,
        state -> Text,
        due_at -> Timestamptz,
        revoke_at -> Nullable<Timestamptz>,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        result -> Nullable<Jsonb>,
        requested_by -> Text,
        request_id -> Nullable<Text>,
        received_at -> Timestamptz,
        applied_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    lifecycle_marks (space_id, subject_kind, subject_id, aspect) {
        space_id -> Text,
        subject_kind -> Text,
        subject_id -> Text,
        aspect -> Text,
        occurred_at -> Nullable<Timestamptz>,
        event -> Nullable<Uuid>,
        event_source -> Nullable<Text>,
        event_key -> Nullable<Text>,
    }
}

diesel::table! {
    lifecycle_settings (space_id, event_type) {
        space_id -> Text,
        event_type -> Text,
        effect -> Text,
        grace_seconds -> Nullable<Int4>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    mirror_assets (account_id, adam_id, pricing_param) {
        account_id -> Uuid,
        adam_id -> Text,
        pricing_param -> Text,
        changed_at -> Timestamptz,
        digest -> Nullable<Bytea>,
    }
}

diesel::table! {
    notifications (id) {
        id -> Uuid,
        space_id -> Text,
        key -> Text,
        kind -> Text,
        severity -> Text,
        scope -> Text,
        account_id -> Nullable<Uuid>,
        adam_id -> Nullable<Text>,
        pricing_param -> Nullable<Text>,
        level -> Nullable<Int4>,
        message -> Text,
        action -> Text,
        details -> Jsonb,
        raised_at -> Timestamptz,
        cleared_at -> Nullable<Timestamptz>,
        cleared_reason -> Nullable<Text>,
        acknowledged_at -> Nullable<Timestamptz>,
        acknowledged_by -> Nullable<Text>,
    }
}

diesel::table! {
    plan_items (plan_id, seq) {
        plan_id -> Uuid,
        seq -> Int4,
        account_id -> Uuid,
        change -> Text,
        adam_id -> Text,
        pricing_param -> Text,
        license_type -> Text,
        target -> Text,
        assignment_id -> Nullable<Uuid>,
        reason -> Text,
        outcome -> Nullable<Text>,
        outcome_reason -> Nullable<Text>,
    }
}

diesel::table! {
    plans (id) {
        id -> Uuid,
        space_id -> Text,
        account_id -> Nullable<Uuid>,
        action -> Text,
        options -> Jsonb,
        state -> Text,
        created_by -> Text,
        request_id -> Nullable<Text>,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        cap -> Int4,
        candidates -> Int4,
        applied_at -> Nullable<Timestamptz>,
        applied_by -> Nullable<Text>,
        outcome -> Nullable<Jsonb>,
    }
}

diesel::table! {
    policy_entries (policy_id, target_kind, target) {
        policy_id -> Uuid,
        target_kind -> Text,
        target -> Text,
        mode -> Text,
        account_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    spaces (id) {
        id -> Text,
        name -> Text,
        description -> Text,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    sync_runs (id) {
        id -> Uuid,
        space_id -> Text,
        account_id -> Uuid,
        kind -> Text,
        trigger -> Text,
        requested_by -> Text,
        request_id -> Nullable<Text>,
        state -> Text,
        attempts -> Int4,
        requested_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        requests -> Int4,
        pages_read -> Int4,
        stats -> Jsonb,
        drift -> Jsonb,
        error -> Nullable<Jsonb>,
        version_before -> Nullable<Text>,
        version_after -> Nullable<Text>,
    }
}

diesel::table! {
    subjects (id) {
        id -> Uuid,
        space_id -> Text,
        kind -> Text,
        external_id -> Text,
        groups -> Array<Nullable<Text>>,
        user_external_id -> Nullable<Text>,
        shared_ipad -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        last_seen_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    waitlist (assignment_id) {
        assignment_id -> Uuid,
        seq -> Int8,
        space_id -> Text,
        adam_id -> Text,
        pricing_param -> Text,
        subject_id -> Uuid,
        subject_kind -> Text,
        subject_external_id -> Text,
        wish -> Text,
        request_id -> Nullable<Text>,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    waitlist_wakeups (space_id, adam_id, pricing_param) {
        space_id -> Text,
        adam_id -> Text,
        pricing_param -> Text,
        generation -> Int8,
        woken_at -> Timestamptz,
        locked_by -> Nullable<Text>,
        locked_until -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhook_attempts (id) {
        id -> Int8,
        endpoint_id -> Uuid,
        space_id -> Text,
        event_id -> Uuid,
        event_type -> Text,
        sequence -> Nullable<Int8>,
        attempt -> Int4,
        attempted_at -> Timestamptz,
        delivered -> Bool,
        status -> Nullable<Int4>,
        latency_ms -> Int4,
        response -> Nullable<Text>,
        error -> Nullable<Text>,
        next_attempt_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Int8,
        endpoint_id -> Uuid,
        space_id -> Text,
        sequence -> Int8,
        event_id -> Uuid,
        attempts -> Int4,
        run_at -> Timestamptz,
        locked_by -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_endpoints (id) {
        id -> Uuid,
        space_id -> Text,
        url -> Text,
        event_types -> Array<Text>,
        description -> Text,
        enabled -> Bool,
        disabled_reason -> Nullable<Text>,
        disabled_at -> Nullable<Timestamptz>,
        secret_key_id -> Text,
        secret_nonce -> Bytea,
        secret_ciphertext -> Bytea,
        previous_key_id -> Nullable<Text>,
        previous_nonce -> Nullable<Bytea>,
        previous_ciphertext -> Nullable<Bytea>,
        previous_until -> Nullable<Timestamptz>,
        last_sequence -> Int8,
        failing_since -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(account_distribution_entries -> accounts (account_id));
diesel::joinable!(apple_assignments -> accounts (account_id));
diesel::joinable!(drift_items -> accounts (account_id));
diesel::joinable!(drift_watermarks -> accounts (account_id));
diesel::joinable!(mirror_assets -> accounts (account_id));
diesel::joinable!(plan_items -> plans (plan_id));
diesel::joinable!(accounts -> spaces (space_id));
diesel::joinable!(apple_events -> accounts (account_id));
diesel::joinable!(apple_users -> accounts (account_id));
diesel::joinable!(asset_list_reads -> accounts (account_id));
diesel::joinable!(assets -> accounts (account_id));
diesel::joinable!(assignments -> spaces (space_id));
diesel::joinable!(assignments -> subjects (subject_id));
diesel::joinable!(bulk_operation_items -> bulk_operations (operation_id));
diesel::joinable!(bulk_operations -> spaces (space_id));
diesel::joinable!(distribution_policies -> spaces (space_id));
diesel::joinable!(jobs -> accounts (account_id));
diesel::joinable!(policy_entries -> accounts (account_id));
diesel::joinable!(policy_entries -> distribution_policies (policy_id));
diesel::joinable!(lifecycle_events -> spaces (space_id));
diesel::joinable!(lifecycle_marks -> spaces (space_id));
diesel::joinable!(lifecycle_settings -> spaces (space_id));
diesel::joinable!(subjects -> spaces (space_id));
diesel::joinable!(waitlist -> assignments (assignment_id));

diesel::allow_tables_to_appear_in_same_query!(
    account_distribution_entries,
    accounts,
    activity_log,
    apple_assignments,
    apple_events,
    apple_notifications,
    apple_pace,
    apple_users,
    asset_list_reads,
    assets,
    assignments,
    bulk_operation_items,
    bulk_operations,
    deployment,
    distribution_policies,
    drift_items,
    drift_watermarks,
    event_sequences,
    event_watermark,
    events,
    idempotency_keys,
    jobs,
    lifecycle_events,
    lifecycle_marks,
    lifecycle_settings,
    mirror_assets,
    notifications,
    plan_items,
    plans,
    policy_entries,
    spaces,
    subjects,
    sync_runs,
    waitlist,
    waitlist_wakeups,
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
);
