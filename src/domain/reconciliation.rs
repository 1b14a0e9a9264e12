//! The vocabulary of keeping the ledger true to Apple (rules T4, T5, T6, T11, T12; docs/sync.md):
//! sync kinds and triggers, the drift classes with the action each suggests, and the actions a
//! plan carries out. Pure types; the sync use case, the drift report and the plans use them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

crate::text_enum! {
    /// How much a sync reads.
    pub enum SyncKind {
        /// Every asset with its counts, every assignment, the users: finds removals.
        Full = "full",
        /// Assignments and users changed since the last read's `versionId`, plus the asset
        /// counts; Apple's unknown-version answer (9721) turns it into a full sync.
        Incremental = "incremental",
    }
}

crate::text_enum! {
    /// What asked for a sync.
    pub enum SyncTrigger {
        /// The schedule (incremental every `VPP_SYNC_INCREMENTAL_MINUTES`, full every
        /// `VPP_SYNC_FULL_HOURS`).
        Schedule = "schedule",
        /// The account was just attached.
        Attach = "attach",
        /// The account's sToken was replaced.
        TokenReplaced = "token_replaced",
        /// A caller asked (`POST …/sync`, Refresh): always full.
        Manual = "manual",
    }
}

crate::text_enum! {
    /// Where a sync run is.
    pub enum SyncState {
        /// Waiting for a sync worker (or for the account's Retry-After).
        Queued = "queued",
        /// A worker is reading Apple or applying what it read.
        Running = "running",
        /// Applied; `drift` and `stats` say what it found.
        Succeeded = "succeeded",
        /// Gave up; `error` says why. Nothing of it was applied.
        Failed = "failed",
    }
}

crate::text_enum! {
    /// A difference between the ledger and Apple, as a sync found it (T11).
    pub enum DriftClass {
        /// Assigned at Apple, not by this deployment (another MDM, an admin in Apple Business
        /// Manager, a previous owner).
        AppleOnly = "apple_only",
        /// Live in the ledger (active), not at Apple (revoked behind the service's back).
        LedgerOnly = "ledger_only",
        /// Pending, associating or revoking for longer than `VPP_DRIFT_STUCK_MINUTES`.
        Stuck = "stuck",
        /// Apple's assigned count differs from the assignments Apple lists, or from what the
        /// ledger and the other MDMs hold.
        CountMismatch = "count_mismatch",
        /// Apple's total dropped below what the ledger holds (a refund, a transfer): the asset
        /// stops allocating; nothing is revoked by the service on its own.
        Overcommitted = "overcommitted",
    }
}

/// How many drift items of each class a sync found (a sync run's `drift`, the report's
/// summary).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DriftCounts {
    pub apple_only: i64,
    pub ledger_only: i64,
    pub stuck: i64,
    pub count_mismatch: i64,
    pub overcommitted: i64,
}

impl DriftCounts {
    /// Items of every class.
    pub fn total(&self) -> i64 {
        self.apple_only + self.ledger_only + self.stuck + self.count_mismatch + self.overcommitted
    }

    /// Adds `n` items of `class`.
    pub fn add(&mut self, class: DriftClass, n: i64) {
        match class {
            DriftClass::AppleOnly => self.apple_only += n,
            DriftClass::LedgerOnly => self.ledger_only += n,
            DriftClass::Stuck => self.stuck += n,
            DriftClass::CountMismatch => self.count_mismatch += n,
            DriftClass::Overcommitted => self.overcommitted += n,
        }
    }
}

crate::text_enum! {
    /// Why Reconcile revokes a license this deployment assigned (T6).
    pub enum ReconcileCriterion {
        /// The asset's policy now disallows the subject (A3).
        Disallowed = "disallowed",
        /// The license came from first-come-first-served gating and the subject is no longer
        /// in any of the policy's groups (and not reserved).
        LeftGroup = "left_group",
        /// The license came from a fallback account (A4) whose distribution list no longer
        /// includes the subject.
        NotOnDistributionList = "not_on_distribution_list",
        /// The MDM has not seen the subject for `VPP_RECONCILE_UNSEEN_DAYS`.
        NotSeen = "not_seen",
    }
}

crate::text_enum! {
    /// What the drift report suggests doing about an item.
    pub enum SuggestedAction {
        /// Take the license over as this deployment's (migrating from another MDM).
        Adopt = "adopt",
        /// Revoke it at Apple (Clean Up), when it is not wanted.
        CleanUp = "clean_up",
        /// Associate the license again, or mark it lost (Repair).
        Repair = "repair",
        /// Follow the Apple event again or resubmit (Repair).
        Resubmit = "resubmit",
        /// Nothing to do but wait for the next sync (counts Apple has not settled yet).
        Resync = "resync",
        /// Buy licenses or revoke some by hand: the service revokes nothing by itself.
        ReduceUsage = "reduce_usage",
    }
}

impl DriftClass {
    /// The action the drift report suggests for an item of this class.
    pub fn suggested_action(self) -> SuggestedAction {
        match self {
            DriftClass::AppleOnly => SuggestedAction::Adopt,
            DriftClass::LedgerOnly => SuggestedAction::Repair,
            DriftClass::Stuck => SuggestedAction::Resubmit,
            DriftClass::CountMismatch => SuggestedAction::Resync,
            DriftClass::Overcommitted => SuggestedAction::ReduceUsage,
        }
    }
}

crate::text_enum! {
    /// What a plan does (T12, T4, T6).
    pub enum PlanAction {
        /// `apple_only` licenses become this deployment's assignments (rule `adopted`).
        Adopt = "adopt",
        /// `apple_only` licenses are revoked at Apple (T4).
        CleanUp = "clean_up",
        /// `ledger_only` and `stuck` assignments are associated again, followed again, or
        /// marked lost.
        Repair = "repair",
        /// Licenses this deployment assigned that are no longer used are revoked (T6).
        Reconcile = "reconcile",
    }
}

crate::text_enum! {
    /// One change of a plan.
    pub enum PlanChange {
        /// Record Apple's license as this deployment's assignment (active, rule `adopted`).
        Adopt = "adopt",
        /// Release Apple's license (it is recorded, then revoked through the dispatcher).
        RevokeAtApple = "revoke_at_apple",
        /// Queue the association of a `ledger_only` or stuck pending assignment again.
        Reassociate = "reassociate",
        /// Free a `ledger_only` license in the ledger (state `revoked`, reason `lost at Apple`).
        MarkLost = "mark_lost",
        /// Poll the Apple event of a stuck associating assignment again.
        FollowEvent = "follow_event",
        /// Queue the release of a stuck revoking assignment again.
        ResubmitRelease = "resubmit_release",
        /// Revoke an assignment this deployment made (Reconcile).
        Revoke = "revoke",
    }
}

crate::text_enum! {
    /// Whether a plan was applied.
    pub enum PlanState {
        /// Listed, not applied; can be applied until `expires_at`.
        Planned = "planned",
        /// Applied (once; applying again answers the same outcome).
        Applied = "applied",
    }
}

crate::text_enum! {
    /// What applying one item did.
    pub enum ItemOutcome {
        Applied = "applied",
        /// The ledger or Apple changed since the plan (`outcome_reason` says how).
        Skipped = "skipped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_counts_add_up_per_class() {
        let mut counts = DriftCounts::default();
        for (i, class) in DriftClass::ALL.iter().enumerate() {
            counts.add(*class, i as i64 + 1);
        }
        assert_eq!(counts.apple_only, 1);
        assert_eq!(counts.overcommitted, 5);
        assert_eq!(counts.total(), 15);
    }

    #[test]
    fn every_drift_class_suggests_an_action() {
        let actions: Vec<_> = DriftClass::ALL
            .iter()
            .map(|c| c.suggested_action())
            .collect();
        assert_eq!(actions.len(), 5);
        assert_eq!(
            DriftClass::AppleOnly.suggested_action(),
            SuggestedAction::Adopt
        );
        assert_eq!(
            DriftClass::Overcommitted.suggested_action(),
            SuggestedAction::ReduceUsage
        );
    }
}
