//! Seed format: locations with their token, assets, users and assignments (JSON, camelCase).
//! Used by `apple-sim --seed file.json`, `POST /_sim/seed` and [`super::SimConfig::seed`];
//! `examples/apple-sim-seed.json` is a complete example. Unknown fields are refused so typos show.

use serde::{Deserialize, Serialize};

use super::settings::SettingsPatch;
use crate::apple::stoken::SToken;
use crate::apple::types::{MdmInfo, Platform, PricingParam, ProductType};

/// A whole seed file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedFile {
    /// Settings applied before the locations are added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<SettingsPatch>,
    #[serde(default)]
    pub locations: Vec<SeedLocation>,
}

/// State of a token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TokenStatus {
    #[default]
    Valid,
    /// Answers 9621.
    Expired,
    /// Answers 9625.
    Revoked,
    /// Answers 9622 (as an unknown token does).
    Invalid,
}

/// One location (one Apple "library", one uId) with its first token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedLocation {
    /// Digits; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u_id: Option<String>,
    pub name: String,
    /// `orgName` in the token; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_name: Option<String>,
    /// `countryISO2ACode`; default `US`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Default `volumestore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_platform: Option<String>,
    /// Default `https://business.apple.com`.
    #[serde(
        rename = "websiteURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub website_url: Option<String>,
    /// Inner `token` value of the sToken; random when absent. With `tokenExpDate` it makes the
    /// printed sToken stable across runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `expDate` of the sToken (Apple format or RFC 3339); default one year from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exp_date: Option<String>,
    #[serde(default)]
    pub token_status: TokenStatus,
    /// Already claimed by an MDM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdm_info: Option<MdmInfo>,
    #[serde(default)]
    pub assets: Vec<SeedAsset>,
    #[serde(default)]
    pub users: Vec<SeedUser>,
    #[serde(default)]
    pub assignments: Vec<SeedAssignment>,
    /// Bulk device assignments (benchmarks).
    #[serde(default)]
    pub generated_assignments: Vec<GeneratedAssignments>,
}

/// An owned asset. Defaults follow the product type: apps are device-assignable and revocable,
/// books neither.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedAsset {
    pub adam_id: String,
    #[serde(default)]
    pub pricing_param: PricingParam,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_type: Option<ProductType>,
    #[serde(default)]
    pub total_count: i64,
    #[serde(default)]
    pub retired_count: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_assignable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_platforms: Option<Vec<Platform>>,
    /// Unlimited free asset (`totalCount` 2147483647 unless `unlimited=true` is queried).
    #[serde(default)]
    pub unlimited: bool,
}

/// A user record. With `managedAppleId` it is Associated, else Registered (with an invite code).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedUser {
    pub client_user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_apple_id: Option<String>,
    /// Seed a retired record.
    #[serde(default)]
    pub retired: bool,
}

/// One assignment: exactly one of `serialNumber` / `clientUserId`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedAssignment {
    pub adam_id: String,
    #[serde(default)]
    pub pricing_param: PricingParam,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_user_id: Option<String>,
}

/// `count` device assignments of one asset to serials `{serialPrefix}000000`, `…000001`, ….
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GeneratedAssignments {
    pub adam_id: String,
    #[serde(default)]
    pub pricing_param: PricingParam,
    pub count: usize,
    #[serde(default = "default_serial_prefix")]
    pub serial_prefix: String,
}

fn default_serial_prefix() -> String {
    "SIM".into()
}

/// A location the simulator created, with its (fake) sToken.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeededLocation {
    pub u_id: String,
    pub name: String,
    /// The sToken text to give the client (fake: minted by the simulator, but in `dev` it is
    /// an account's credential, so it never prints through `Debug`).
    pub s_token: String,
}

impl std::fmt::Debug for SeededLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededLocation")
            .field("u_id", &self.u_id)
            .field("name", &self.name)
            .field("s_token", &"***")
            .finish()
    }
}

impl SeededLocation {
    pub fn stoken(&self) -> SToken {
        SToken::new(&self.s_token)
    }
}
