//! One module per subcommand.

#[cfg(feature = "dev")]
pub mod apple_sim;
#[cfg(feature = "dev")]
pub mod dev;
pub mod migrate;
pub mod openapi;
pub mod rotate_keys;
pub mod serve;
