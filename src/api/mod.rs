//! The `/v1` resources. [`configure`] is the single route registration: the server mounts it
//! and the OpenAPI document is generated from it.

pub mod spaces;

use utoipa_actix_web::service_config::ServiceConfig;

use crate::http::ops;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(ops::livez)
        .service(ops::readyz)
        .service(ops::metrics_text)
        .service(spaces::list_spaces)
        .service(spaces::create_space)
        .service(spaces::get_space)
        .service(spaces::update_space)
        .service(spaces::delete_space);
}
