-- Built CONCURRENTLY (no transaction, one statement: metadata.toml) so allocations keep
-- writing during an upgrade (docs/deploying.md). The event sequencer's walk: activity rows
-- after its watermark in (txid, id) order (src/ledger/outbox.rs). Rows older than the outbox
-- (txid NULL) are left out.
CREATE INDEX CONCURRENTLY IF NOT EXISTS activity_by_txid ON activity_log (txid, id)
    WHERE txid IS NOT NULL;
