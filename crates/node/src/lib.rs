//! The Steadfast node: the daemon, the witness and their data plane, and the commands that run
//! and inspect them ([`commands`]). Two executables link it: `steadfast`, what a user installs
//! (these commands and nothing else), and `steadfast-lab`, which adds the lab, the demo and the
//! benchmarks, and whose lab hosts run these same commands from it.

mod announce;
pub mod commands;
mod control;
mod daemon;
mod dead_man;
mod health;
mod hooks;
pub mod metrics;
mod plane;
mod relay;
mod service_manager;
mod settings;
mod status;
