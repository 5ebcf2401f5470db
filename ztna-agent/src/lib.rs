//! ztna gateway agent.
