//! The vocabulary of allocation: license types, assignment states, rules and skip reasons.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

crate::text_enum! {
    /// Who the license is assigned to at Apple.
    pub enum LicenseType {
        /// Assigned to the device's serial number.
        Device = "device",
        /// Assigned to the user's client user id (covers that user's devices).
        User = "user",
    }
}

crate::text_enum! {
    /// What kind of license the caller wants.
    pub enum LicenseWish {
        /// Device-based for device-assignable assets (always on Shared iPads), else user-based
        /// for the device's user.
        Auto = "auto",
        Device = "device",
        User = "user",
    }
}

crate::text_enum! {
    /// Kind of subject.
    pub enum SubjectKind {
        Device = "device",
        User = "user",
    }
}

crate::text_enum! {
    /// Life cycle of an assignment (docs/rules.md, Assignment life cycle).
    pub enum AssignmentState {
        /// A12: no license was left and the request asked to wait: in line (no license held,
        /// no account chosen yet); becomes `pending` when a license frees, `revoked` when
        /// cancelled, `failed` when the wait expires.
        Waiting = "waiting",
        /// Held in the ledger; the Apple call is queued.
        Pending = "pending",
        /// Sent to Apple; the event id is known.
        Associating = "associating",
        /// Apple confirmed.
        Active = "active",
        /// Final: Apple refused (see `error`), or the license was moved elsewhere.
        Failed = "failed",
        /// Revocation sent or queued; the license is already free in the ledger.
        Revoking = "revoking",
        /// Final: Apple released the license.
        Revoked = "revoked",
    }
}

impl AssignmentState {
    /// Holds a license in the ledger.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            AssignmentState::Pending | AssignmentState::Associating | AssignmentState::Active
        )
    }

    /// No further change will happen.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            AssignmentState::Active | AssignmentState::Failed | AssignmentState::Revoked
        )
    }
}

crate::text_enum! {
    /// The rule that decided an allocation.
    pub enum Rule {
        /// A6: the subject already holds a license for the asset; it is returned.
        Existing = "existing",
        /// A7: the device's user holds a user-based license for the asset, which covers it.
        UserLicenseCoversDevice = "user_license_covers_device",
        /// A2: the subject is reserved in the asset's policy.
        Reservation = "reservation",
        /// A1: the first account, in priority order, that owns the asset.
        Priority = "priority",
        /// A4: a later account, because the earlier ones had nothing free and the subject is on
        /// this account's distribution list.
        Fallback = "fallback",
        /// 9709 from Apple: re-allocated from the next eligible account.
        Reallocation = "reallocation",
        /// A12: no license was left; the request waits in line. The rule that serves it
        /// (`reservation`, `priority`, `fallback`) replaces this one when a license frees.
        Waiting = "waiting",
        /// T12: assigned at Apple before this deployment managed it (another MDM, a previous
        /// owner) and adopted into the ledger by an Adopt plan (or recorded by Clean Up to be
        /// revoked).
        Adopted = "adopted",
    }
}

crate::text_enum! {
    /// Why an account could not serve an allocation.
    pub enum SkipReason {
        /// Every license is held here or assigned elsewhere.
        NoFreeLicense = "no_free_license",
        /// The licenses left are held back for reserved subjects of the asset's policy (A2).
        HeldForReservations = "held_for_reservations",
        /// A12: the licenses left are held for the allocations already waiting in line for
        /// the asset (they are served first, by the wait-list).
        HeldForWaitList = "held_for_wait_list",
        /// A fallback account whose distribution list does not include the subject (A4).
        NotOnDistributionList = "not_on_distribution_list",
        /// The account cannot call Apple and is set to skip (A10).
        Unusable = "unusable",
        /// A device license was asked for an asset that is not device-assignable.
        NotDeviceAssignable = "not_device_assignable",
        /// The account is being deleted.
        Deleting = "deleting",
        /// The account does not make new assets available to everyone, and the space has no
        /// distribution policy for this one yet.
        NoPolicy = "no_policy",
    }
}

/// One account that could not serve, and why.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Skip {
    pub account_id: Uuid,
    pub account_name: String,
    pub priority: i32,
    pub reason: SkipReason,
    /// Human-readable detail (counts, status).
    pub detail: String,
}

/// How an allocation was decided: the allocation explains itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Decision {
    /// Accounts tried before the chosen one (or all of them, when nothing was free).
    pub skipped: Vec<Skip>,
    /// Set when the chosen account cannot call Apple now and the Apple call is queued (A10).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub queued_because: Option<String>,
    /// For re-allocations: the assignment this one replaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub replaces: Option<Uuid>,
}
