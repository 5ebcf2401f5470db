//! The ztna gateway agent: loads the XDP enforcement program, keeps its maps, and installs
//! identity-bound grants.

pub mod dataplane;
