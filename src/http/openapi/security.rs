//! Security schemes: callers present a JWT from their identity provider; the scopes its `scope`
//! claim must hold are declared as an OAuth 2.0 client-credentials flow, the form tools check
//! operation requirements against. Apple's notifications carry the token this service gave Apple.

use serde_json::{Map, Value, json};

use super::{APPLE_NOTIFICATION, CALLERS};
use crate::auth::Scope;

/// The name utoipa annotations use for the callers' requirement (`security(("bearer" = […]))`).
const ANNOTATED: &str = "bearer";

fn scope_description(scope: Scope) -> &'static str {
    match scope {
        Scope::LicensesRead => {
            "Read spaces, accounts (never their sTokens), assignments and policies"
        }
        Scope::LicensesWrite => "Allocate and revoke licenses (implies licenses:read)",
        Scope::AccountsManage => {
            "Add, change and delete token accounts, policies and distribution lists (implies licenses:read)"
        }
        Scope::Admin => "Create, change and delete spaces (implies every other scope)",
    }
}

pub(super) fn schemes(schemes: &mut Map<String, Value>) {
    let scopes: Map<String, Value> = Scope::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), json!(scope_description(*s))))
        .collect();
    schemes.insert(
        CALLERS.to_owned(),
        json!({
            "type": "oauth2",
            "description": "A bearer JWT (`Authorization: Bearer <jwt>`) issued by your identity \
                provider: `iss` and `aud` as configured (VPP_JWT_ISSUER, VPP_JWT_AUDIENCE), `exp`, \
                `nbf`, `sub`, `scope` (space-separated scopes below) and `spaces` (space ids, or \
                [\"*\"] for all). vpp-broker only verifies tokens (HS256, RS256 or ES256 as \
                configured); `tokenUrl` stands for your identity provider's token endpoint.",
            "flows": {
                "clientCredentials": {
                    "tokenUrl": "https://identity-provider.invalid/oauth2/token",
                    "scopes": scopes,
                }
            }
        }),
    );
    schemes.insert(
        APPLE_NOTIFICATION.to_owned(),
        json!({
            "type": "http",
            "scheme": "bearer",
            "description": "The notification auth token this service gave Apple for the account",
        }),
    );
}

/// Renames the annotated caller requirement to the declared scheme.
pub(super) fn requirement(op: &mut Map<String, Value>) {
    let Some(Value::Array(requirements)) = op.get_mut("security") else {
        return;
    };
    for requirement in requirements.iter_mut() {
        if let Some(map) = requirement.as_object_mut()
            && let Some(scopes) = map.remove(ANNOTATED)
        {
            map.insert(CALLERS.to_owned(), scopes);
        }
    }
}
