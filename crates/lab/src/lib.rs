//! Steadfast's lab: groups of hosts in network namespaces, built, crashed, healed and torn down
//! on demand (the engine behind `steadfast-lab lab …` and the integration tests), plus the builtin
//! HTTP backend and a verifying load.

pub mod backend;
pub mod bench;
pub mod configs;
pub mod cpu_quota;
pub mod data_tier;
pub mod demo;
pub mod error;
pub mod faults;
pub mod flood;
pub mod generator;
pub mod lab;
pub mod load;
pub mod options;
pub mod probe;
pub mod redis_ledger;
pub mod redis_verify;
pub mod state;
pub mod system;
pub mod topology;
pub mod webservers;

pub use error::LabError;
pub use faults::{
    crash, cut_one_way, heal, mend_one_way, partition, unpartition, CrashReport, HealReport,
};
pub use lab::{
    down, down_all, info, status, up, vip_holders, DaemonView, DownReport, HostStatus, LabInfo,
    LabStatus,
};
pub use options::{BackendKind, CrashKind, FrontProxy, Mode, ParseChoiceError, UpOptions};
pub use probe::{http_get_in_namespace, redis_ping_in_namespace, HttpReply};
pub use system::{pids_in_namespace, run_in_namespace};
