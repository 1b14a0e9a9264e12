//! This deployment's identity towards Apple (rule T3 in docs/rules.md).
//!
//! On attach and on reclaim the service writes `mdmInfo { id, name, metadata }` into the
//! token's client config: `id` is the deployment's instance id (stored in the `deployment` table
//! at the first migration, so every replica and restart presents the same owner; `VPP_INSTANCE_ID`
//! overrides it), `name` is `VPP_INSTANCE_NAME`, `metadata` names the software and version. An
//! account whose client config carries another `id` is another MDM's until reclaimed.
//!
//! When `VPP_PUBLIC_URL` is set, the same write subscribes the location to Apple's notifications
//! at `<VPP_PUBLIC_URL>/apple/notifications/<account id>` with a fresh random bearer token per
//! account, of which only the SHA-256 is stored. Without it the service relies on status
//! polling alone.

use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::apple::types::{ClientConfigRequest, MdmInfo, NotificationAuthToken, NotificationType};

#[derive(Clone, Debug)]
pub struct Identity {
    pub instance_id: String,
    pub instance_name: String,
    /// External base URL Apple's notifications reach (no trailing slash).
    pub public_url: Option<String>,
}

impl Identity {
    pub fn mdm_info(&self) -> MdmInfo {
        MdmInfo {
            id: self.instance_id.clone(),
            name: self.instance_name.clone(),
            metadata: format!("vpp-broker {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Whether Apple's reported owner is this deployment. No owner at all counts as ours: nothing
    /// names another MDM.
    pub fn owns(&self, reported: Option<&MdmInfo>) -> bool {
        reported.is_none_or(|m| m.id == self.instance_id)
    }

    /// The client config to write for `account`, and the hash of the notification token it
    /// carries (when notifications are configured).
    pub fn client_config(&self, account: Uuid) -> (ClientConfigRequest, Option<Vec<u8>>) {
        let mut request = ClientConfigRequest {
            mdm_info: Some(self.mdm_info()),
            ..Default::default()
        };
        let mut hash = None;
        if let Some(base) = &self.public_url {
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            let token = hex::encode(secret);
            hash = Some(notification_token_hash(&token));
            request.notification_url = Some(format!("{base}/apple/notifications/{account}"));
            request.notification_auth_token = Some(NotificationAuthToken::new(token));
            request.notification_types = Some(vec![
                NotificationType::AssetManagement,
                NotificationType::AssetCount,
                NotificationType::UserManagement,
                NotificationType::UserAssociated,
            ]);
        }
        (request, hash)
    }
}

/// What the ledger stores of a notification bearer token.
pub fn notification_token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}
