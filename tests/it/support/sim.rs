//! The Apple simulator in this process, over real HTTP.

use vpp_broker::apple::types::{PricingParam, ProductType};
use vpp_broker::apple_sim::{
    SeedAsset, SeedFile, SeedLocation, SimConfig, SimHandle, SimSettings, Simulator,
};

/// An app with `total` licenses (device-assignable, revocable).
pub fn app(adam_id: &str, total: i64) -> SeedAsset {
    SeedAsset {
        adam_id: adam_id.into(),
        pricing_param: PricingParam::Stdq,
        product_type: Some(ProductType::App),
        total_count: total,
        ..Default::default()
    }
}

/// A book (user-assignable only, not revocable).
pub fn book(adam_id: &str, total: i64) -> SeedAsset {
    SeedAsset {
        product_type: Some(ProductType::Book),
        ..app(adam_id, total)
    }
}

pub fn location(u_id: &str, name: &str, assets: Vec<SeedAsset>) -> SeedLocation {
    SeedLocation {
        u_id: Some(u_id.into()),
        name: name.into(),
        country: Some("DE".into()),
        assets,
        ..Default::default()
    }
}

/// Starts a simulator with fast events (50 ms) and the given locations.
pub async fn start(locations: Vec<SeedLocation>) -> SimHandle {
    start_with(locations, |_| {}).await
}

pub async fn start_with(
    locations: Vec<SeedLocation>,
    tweak: impl FnOnce(&mut SimSettings),
) -> SimHandle {
    let mut settings = SimSettings {
        event_delay_ms: 50,
        ..SimSettings::default()
    };
    tweak(&mut settings);
    Simulator::start(SimConfig {
        workers: 1,
        settings,
        seed: Some(SeedFile {
            settings: None,
            locations,
        }),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

/// The sToken the simulator minted for seeded location `u_id`.
pub fn stoken(sim: &SimHandle, u_id: &str) -> String {
    sim.seeded()
        .iter()
        .find(|l| l.u_id == u_id)
        .map(|l| l.s_token.clone())
        .expect("seeded location")
}
