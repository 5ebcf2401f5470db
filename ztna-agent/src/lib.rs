//! The ztna gateway agent: loads the XDP enforcement program, keeps its maps, and installs
//! identity-bound grants.

pub mod agent;
pub mod compile;
pub mod config;
pub mod dataplane;
pub mod grant_table;
pub mod identity;
pub mod policy;
pub mod posture;
