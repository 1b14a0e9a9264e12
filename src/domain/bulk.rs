//! Bulk operations (rule V6, issue 14): the vocabulary and the pure rules of allocating or
//! revoking assets for many subjects as one operation. The use case is [`crate::bulk`]; the
//! store is [`crate::ledger::bulk_operations`].
//!
//! An operation's *items* are its (subject, asset) pairs: `total = subjects × assets`. Each item
//! ends `succeeded` (a license allocated, or a license revoked), `skipped` (nothing to do: the
//! subject already held the asset, or held nothing to revoke) or `failed` (a rule refused it:
//! no license left, the policy disallows the subject, Apple does not take the asset back, …;
//! a sample of these is kept, see [`ERROR_SAMPLE`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::allocation::AssetRef;
use super::model::SubjectKind;

/// Most subjects one operation names (listed or matched by a selector).
pub const MAX_SUBJECTS: usize = 100_000;
/// Most assets one operation names.
pub const MAX_ASSETS: usize = 20;
/// Subjects processed per transaction by the worker: every item of a chunk (its subjects ×
/// the assets) is decided and written in one transaction, which is also one full Apple request
/// per asset (Apple takes at most 1,000 serial numbers or users per request).
pub const CHUNK: usize = 1000;
/// Most item errors an operation keeps as a sample.
pub const ERROR_SAMPLE: usize = 20;
/// Failed attempts of one chunk (database errors) before the operation is `failed`.
pub const MAX_ATTEMPTS: i32 = 5;

crate::text_enum! {
    /// What a bulk operation does.
    pub enum BulkAction {
        /// Allocate every asset to every subject (rules A1–A12 decide each).
        Allocate = "allocate",
        /// Revoke every asset's licenses held by every subject (V1).
        Revoke = "revoke",
    }
}

crate::text_enum! {
    /// Where a bulk operation stands.
    pub enum BulkState {
        /// Stored; no chunk processed yet.
        Queued = "queued",
        /// Some chunks processed; `counts` say how far.
        Running = "running",
        /// Final: every item succeeded or was skipped.
        Succeeded = "succeeded",
        /// Final: every item was processed, some failed (`errors` holds a sample).
        CompletedWithErrors = "completed_with_errors",
        /// Final: cancelled; the chunks processed before stay done (`counts` say how far).
        Cancelled = "cancelled",
        /// Final: a chunk kept failing on the database; the chunks before it stay done.
        Failed = "failed",
    }
}

impl BulkState {
    /// True when nothing more happens to the operation.
    pub fn is_final(self) -> bool {
        !matches!(self, BulkState::Queued | BulkState::Running)
    }

    /// The final state of an operation that processed every item.
    pub fn finished(failed: i64) -> BulkState {
        if failed > 0 {
            BulkState::CompletedWithErrors
        } else {
            BulkState::Succeeded
        }
    }
}

/// Who the operation is for, when the caller names a selector instead of a list: resolved when
/// the operation is created (a snapshot of who matches then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Every device and user of the space whose stored groups include this group.
    Group(String),
    /// Every subject of the space holding a live license (pending, associating, active) of
    /// this asset.
    HoldersOf(AssetRef),
}

/// One subject of an operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BulkSubject {
    pub kind: SubjectKind,
    pub id: String,
}

/// How an item ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    Succeeded,
    Skipped,
    Failed,
}

/// The items' outcomes so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BulkCounts {
    /// Items: subjects × assets.
    pub total: i64,
    /// Items done: a license allocated or revoked.
    pub succeeded: i64,
    /// Items refused (see `errors`).
    pub failed: i64,
    /// Items with nothing to do: the subject already held the asset (allocate) or held no
    /// license of it (revoke).
    pub skipped: i64,
}

impl BulkCounts {
    /// Items processed so far.
    pub fn processed(&self) -> i64 {
        self.succeeded + self.failed + self.skipped
    }

    pub fn add(&mut self, outcome: ItemOutcome) {
        match outcome {
            ItemOutcome::Succeeded => self.succeeded += 1,
            ItemOutcome::Skipped => self.skipped += 1,
            ItemOutcome::Failed => self.failed += 1,
        }
    }
}

/// One failed item, kept in the operation's error sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BulkItemError {
    /// `device` or `user`.
    pub subject_kind: SubjectKind,
    /// Serial number or client user id.
    pub subject_id: String,
    /// Apple's product id.
    pub adam_id: String,
    pub pricing_param: String,
    /// The problem type slug the same refusal answers on `POST …/assignments` or
    /// `POST …/revocations` (e.g. `no-license-available`, `subject-disallowed`,
    /// `not-revocable`).
    pub problem: String,
    /// What went wrong, in words.
    pub detail: String,
}

/// `sample` with `more` appended, kept to [`ERROR_SAMPLE`] entries (the first ones).
pub fn merge_errors(
    mut sample: Vec<BulkItemError>,
    more: Vec<BulkItemError>,
) -> Vec<BulkItemError> {
    let room = ERROR_SAMPLE.saturating_sub(sample.len());
    sample.extend(more.into_iter().take(room));
    sample
}

/// Removes repeated subjects (same kind and id), keeping the first occurrence's position.
pub fn dedup_subjects(subjects: Vec<BulkSubject>) -> Vec<BulkSubject> {
    let mut seen = std::collections::HashSet::with_capacity(subjects.len());
    subjects
        .into_iter()
        .filter(|s| seen.insert((s.kind, s.id.clone())))
        .collect()
}

/// The reason recorded on every assignment (and activity row) an operation allocates or
/// revokes: the operation's id, then the caller's reason.
pub fn item_reason(operation: uuid::Uuid, reason: &str) -> String {
    if reason.is_empty() {
        format!("bulk operation {operation}")
    } else {
        format!("bulk operation {operation}: {reason}")
    }
}

/// The problem type slug and detail of an allocation refusal (the slugs `POST …/assignments`
/// answers with).
pub fn refusal_problem(refusal: &super::allocation::Refusal) -> (&'static str, String) {
    use super::allocation::Refusal;
    let slug = match refusal {
        Refusal::UnknownSpace(_) => "not-found",
        Refusal::UnknownAsset { .. } => "asset-not-found",
        Refusal::Disallowed(_) => "subject-disallowed",
        Refusal::Incompatible(_) | Refusal::HolderChanged(_) => "license-type-unavailable",
        Refusal::Exhausted { .. } => "no-license-available",
    };
    (slug, refusal.to_string())
}

crate::text_enum! {
    /// What a dry run says would happen to one item.
    pub enum BulkPlanOutcome {
        /// A license would be allocated (`account_id` says from which account).
        Allocate = "allocate",
        /// The subject already holds the asset (or its user's license covers the device).
        AlreadyHeld = "already_held",
        /// A rule refuses the allocation (`problem`, `detail`).
        Refused = "refused",
        /// The subject's license would be revoked.
        Revoke = "revoke",
        /// The subject holds no license of the asset.
        NotHeld = "not_held",
        /// Apple does not take the asset's licenses back (books): left as they are.
        NotRevocable = "not_revocable",
    }
}

/// A dry run's answer: what the operation would do, per asset and account, decided by the
/// same rules as the operation itself, without writing anything.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkPlan {
    pub action: BulkAction,
    /// Distinct subjects (listed, or matched by the selector now).
    pub subjects: i64,
    /// Items: subjects × assets.
    pub total: i64,
    /// Per asset, in the order given.
    pub assets: Vec<BulkAssetPlan>,
    /// The first items (at most 20) and what would happen to each.
    pub sample: Vec<BulkPlanItem>,
}

/// What a dry run says would happen to one asset's items.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct BulkAssetPlan {
    pub adam_id: String,
    pub pricing_param: String,
    /// Licenses that would be allocated (allocate).
    pub allocate: i64,
    /// Subjects that already hold the asset (allocate: skipped).
    pub already_held: i64,
    /// Allocations a rule refuses (allocate: failed); `refusals` says why.
    pub refused: i64,
    /// Licenses that would be revoked (revoke).
    pub revoke: i64,
    /// Subjects holding no license of the asset (revoke: skipped).
    pub not_held: i64,
    /// Licenses Apple does not take back (revoke: failed).
    pub not_revocable: i64,
    /// Per account: what would be allocated from it or revoked in it.
    pub accounts: Vec<BulkAccountPlan>,
    /// Refusals counted by problem type (`no-license-available`, `subject-disallowed`, …).
    pub refusals: Vec<BulkRefusalCount>,
}

/// One account's share of an asset's plan.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct BulkAccountPlan {
    pub account_id: uuid::Uuid,
    pub allocate: i64,
    pub revoke: i64,
}

/// How many items one kind of refusal would fail.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct BulkRefusalCount {
    /// The problem type slug.
    pub problem: String,
    pub count: i64,
}

/// One item of a dry run's sample.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkPlanItem {
    pub subject_kind: SubjectKind,
    pub subject_id: String,
    pub adam_id: String,
    pub pricing_param: String,
    pub outcome: BulkPlanOutcome,
    /// The account that would serve (allocate) or holds the license (revoke, already held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub account_id: Option<uuid::Uuid>,
    /// `refused`: the problem type slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub problem: Option<String>,
    /// `refused`: why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub detail: Option<String>,
}

impl BulkPlan {
    pub fn new(action: BulkAction, subjects: usize, assets: &[AssetRef]) -> BulkPlan {
        BulkPlan {
            action,
            subjects: subjects as i64,
            total: (subjects * assets.len()) as i64,
            assets: assets
                .iter()
                .map(|a| BulkAssetPlan {
                    adam_id: a.adam_id.clone(),
                    pricing_param: a.pricing_param.clone(),
                    ..BulkAssetPlan::default()
                })
                .collect(),
            sample: Vec::new(),
        }
    }

    /// Counts one item: `asset` is the index of its asset; `problem` is (slug, detail) of a
    /// refusal.
    pub fn record(
        &mut self,
        subject: &BulkSubject,
        asset: usize,
        outcome: BulkPlanOutcome,
        account: Option<uuid::Uuid>,
        problem: Option<(&str, String)>,
    ) {
        let Some(plan) = self.assets.get_mut(asset) else {
            return;
        };
        match outcome {
            BulkPlanOutcome::Allocate => plan.allocate += 1,
            BulkPlanOutcome::AlreadyHeld => plan.already_held += 1,
            BulkPlanOutcome::Refused => plan.refused += 1,
            BulkPlanOutcome::Revoke => plan.revoke += 1,
            BulkPlanOutcome::NotHeld => plan.not_held += 1,
            BulkPlanOutcome::NotRevocable => plan.not_revocable += 1,
        }
        if let Some(account_id) = account
            && matches!(outcome, BulkPlanOutcome::Allocate | BulkPlanOutcome::Revoke)
        {
            let at = match plan
                .accounts
                .iter()
                .position(|a| a.account_id == account_id)
            {
                Some(at) => at,
                None => {
                    plan.accounts.push(BulkAccountPlan {
                        account_id,
                        ..BulkAccountPlan::default()
                    });
                    plan.accounts.len() - 1
                }
            };
            let share = &mut plan.accounts[at];
            if outcome == BulkPlanOutcome::Allocate {
                share.allocate += 1;
            } else {
                share.revoke += 1;
            }
        }
        if let Some((slug, _)) = &problem {
            match plan.refusals.iter_mut().find(|r| r.problem == *slug) {
                Some(r) => r.count += 1,
                None => plan.refusals.push(BulkRefusalCount {
                    problem: (*slug).to_owned(),
                    count: 1,
                }),
            }
        }
        if self.sample.len() < ERROR_SAMPLE {
            let (problem, detail) = match problem {
                Some((slug, detail)) => (Some(slug.to_owned()), Some(detail)),
                None => (None, None),
            };
            self.sample.push(BulkPlanItem {
                subject_kind: subject.kind,
                subject_id: subject.id.clone(),
                adam_id: plan.adam_id.clone(),
                pricing_param: plan.pricing_param.clone(),
                outcome,
                account_id: account,
                problem,
                detail,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(i: usize) -> BulkItemError {
        BulkItemError {
            subject_kind: SubjectKind::Device,
            subject_id: format!("S{i}"),
            adam_id: "1".into(),
            pricing_param: "STDQ".into(),
            problem: "no-license-available".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn v6_error_sample_keeps_the_first_twenty() {
        let first: Vec<BulkItemError> = (0..15).map(err).collect();
        let merged = merge_errors(first, (15..40).map(err).collect());
        assert_eq!(merged.len(), ERROR_SAMPLE);
        assert_eq!(merged[0].subject_id, "S0");
        assert_eq!(merged[19].subject_id, "S19");
    }

    #[test]
    fn v6_final_state_says_whether_anything_failed() {
        assert_eq!(BulkState::finished(0), BulkState::Succeeded);
        assert_eq!(BulkState::finished(3), BulkState::CompletedWithErrors);
        assert!(BulkState::Cancelled.is_final());
        assert!(!BulkState::Running.is_final());
    }

    #[test]
    fn v6_repeated_subjects_count_once() {
        let s = |kind, id: &str| BulkSubject {
            kind,
            id: id.into(),
        };
        let out = dedup_subjects(vec![
            s(SubjectKind::Device, "A"),
            s(SubjectKind::User, "A"),
            s(SubjectKind::Device, "A"),
            s(SubjectKind::Device, "B"),
        ]);
        assert_eq!(
            out,
            vec![
                s(SubjectKind::Device, "A"),
                s(SubjectKind::User, "A"),
                s(SubjectKind::Device, "B")
            ]
        );
    }

    #[test]
    fn v6_counts_add_up() {
        let mut c = BulkCounts {
            total: 3,
            ..Default::default()
        };
        c.add(ItemOutcome::Succeeded);
        c.add(ItemOutcome::Skipped);
        c.add(ItemOutcome::Failed);
        assert_eq!(c.processed(), 3);
        assert_eq!((c.succeeded, c.skipped, c.failed), (1, 1, 1));
    }
}
