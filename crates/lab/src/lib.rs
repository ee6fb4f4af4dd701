//! placeholder
pub mod backend;
pub mod generator;
pub mod load;
