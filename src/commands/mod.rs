//! One module per subcommand.

pub mod apple_sim;
pub mod dev;
pub mod migrate;
pub mod openapi;
pub mod rotate_keys;
pub mod serve;
