//! Revocations asked for by a caller (rule V1): one assignment, or every live assignment that
//! matches filters. Each runs in one transaction; the statements are [`super::revoke`]'s and the
//! ledger's.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use super::revoke::{self, Revoked, Scope};
use crate::domain::model::SubjectKind;
use crate::domain::origin::Origin;
use crate::domain::records::AssignmentRow;
use crate::ledger::assignments as store;

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The space, account or assignment named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Apple does not take these licenses back (books); nothing was changed. Says which license,
    /// or how many of those matched.
    #[error("{0}")]
    NotRevocable(String),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// Revokes one assignment if it is live (a finished one is left as it is) and returns it as it
/// is then.
pub async fn revoke_one(
    conn: &mut AsyncPgConnection,
    space: &str,
    id: Uuid,
    origin: &Origin,
    reason: &str,
) -> Result<AssignmentRow, RevocationError> {
    let not_found = || RevocationError::NotFound(format!("assignment {id}"));
    // The row lock (first in the ledger's lock order) makes the state read here the state the
    // revocation acts on: a finished assignment is answered as it is, a live one is revoked.
    conn.transaction(async |conn| {
        let row = store::find_locked(conn, space, id)
            .await?
            .ok_or_else(not_found)?;
        if !row.state.is_live() {
            return Ok(());
        }
        let scope = Scope {
            assignment: Some(id),
            ..Default::default()
        };
        if revoke::not_revocable(conn, space, &scope).await? > 0 {
            return Err(RevocationError::NotRevocable(format!(
                "assignment {id} holds a license of asset {}/{}",
                row.adam_id, row.pricing_param
            )));
        }
        revoke::revoke(conn, space, &scope, origin, reason).await?;
        Ok(())
    })
    .await?;
    store::find(conn, space, id).await?.ok_or_else(not_found)
}

/// Which live assignments to revoke: every given filter must match.
#[derive(Clone, Debug, Default)]
pub struct Matching {
    pub account: Option<Uuid>,
    /// Apple product id, and the pricing (both pricings when `None`).
    pub asset: Option<(String, Option<String>)>,
    pub subject: Option<(SubjectKind, String)>,
}

/// Revokes every live assignment of `space` that `matching` selects. Naming an asset whose
/// licenses Apple does not take back is refused; without an asset filter such licenses are left
/// as they are and counted.
pub async fn revoke_matching(
    conn: &mut AsyncPgConnection,
    space: &str,
    matching: &Matching,
    origin: &Origin,
    reason: &str,
) -> Result<Revoked, RevocationError> {
    if crate::ledger::spaces::find(conn, space).await?.is_none() {
        return Err(RevocationError::NotFound(format!("space {space}")));
    }
    if let Some(account) = matching.account
        && crate::ledger::accounts::find(conn, space, account)
            .await?
            .is_none()
    {
        return Err(RevocationError::NotFound(format!("account {account}")));
    }
    let subject = match &matching.subject {
        Some((kind, id)) => match crate::ledger::subjects::find(conn, space, *kind, id).await? {
            Some(row) => Some(row.id),
            // A subject the space never saw holds nothing.
            None => return Ok(Revoked::default()),
        },
        None => None,
    };
    let scope = Scope {
        assignment: None,
        account: matching.account,
        adam_id: matching.asset.as_ref().map(|(adam_id, _)| adam_id.clone()),
        pricing_param: matching
            .asset
            .as_ref()
            .and_then(|(_, pricing)| pricing.clone()),
        subject,
        include_not_revocable: false,
    };
    conn.transaction(async |conn| {
        if let Some((adam_id, _)) = &matching.asset {
            let n = revoke::not_revocable(conn, space, &scope).await?;
            if n > 0 {
                return Err(RevocationError::NotRevocable(format!(
                    "{n} of the licenses matched are of asset {adam_id}"
                )));
            }
        }
        Ok(revoke::revoke(conn, space, &scope, origin, reason).await?)
    })
    .await
}
