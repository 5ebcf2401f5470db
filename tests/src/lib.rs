//! Integration test helpers.

pub mod netns;
