//! Priorities (rules A1, A5 in docs/rules.md): dense (1..n) and unique per space, also under
//! concurrent reorders, because every renumbering holds the space row's lock. Reordering never
//! touches assignments: existing licenses stay where they are; only new allocations see the new
//! order.

use diesel_async::AsyncConnection;
use uuid::Uuid;

use super::AccountError;
use crate::domain::origin::Origin;
use crate::domain::validation::FieldError;
use crate::ledger::accounts::{self as store, AccountRow};
use crate::ledger::activity::{self, Activity};
use crate::state::AppState;

/// Sets the full order: `ordered` must name every account of the space exactly once.
pub async fn reorder(
    state: &AppState,
    actor: &Origin,
    space: &str,
    ordered: &[Uuid],
) -> Result<Vec<AccountRow>, AccountError> {
    let mut conn = state.pool.get().await?;
    conn.transaction(async |conn| {
        if store::lock_space(conn, space).await?.is_none() {
            return Err(AccountError::NotFound(format!("space {space}")));
        }
        let current = store::list(conn, space).await?;
        let mut expected: Vec<Uuid> = current.iter().map(|a| a.id).collect();
        let mut given = ordered.to_vec();
        expected.sort();
        given.sort();
        if expected != given {
            return Err(AccountError::Invalid(vec![FieldError {
                field: "order".into(),
                message: format!(
                    "must list each of the space's {} accounts exactly once",
                    expected.len()
                ),
            }]));
        }
        store::write_order(conn, ordered).await?;
        activity::record(
            conn,
            Activity::new(actor, "accounts.reordered")
                .space(space)
                .details(serde_json::json!({ "order": ordered })),
        )
        .await?;
        Ok(store::list(conn, space).await?)
    })
    .await
}

/// Moves one account to `priority` (clamped to 1..n), shifting the others.
pub async fn move_to(
    conn: &mut diesel_async::AsyncPgConnection,
    actor: &Origin,
    space: &str,
    id: Uuid,
    priority: i32,
) -> Result<(), AccountError> {
    if store::lock_space(conn, space).await?.is_none() {
        return Err(AccountError::NotFound(format!("space {space}")));
    }
    let current = store::list(conn, space).await?;
    let mut order: Vec<Uuid> = current.iter().map(|a| a.id).filter(|a| *a != id).collect();
    if order.len() == current.len() {
        return Err(AccountError::NotFound(format!("account {id}")));
    }
    let at = (priority.max(1) as usize - 1).min(order.len());
    order.insert(at, id);
    store::write_order(conn, &order).await?;
    activity::record(
        conn,
        Activity::new(actor, "account.moved")
            .space(space)
            .account(id)
            .details(serde_json::json!({ "priority": at + 1 })),
    )
    .await?;
    Ok(())
}
