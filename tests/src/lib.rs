//! Integration test helpers.

pub mod netns;
pub mod packet;
pub mod root;
