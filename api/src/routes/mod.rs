//! HTTP handlers, one file per resource.

pub mod deliveries;
pub mod health;
pub mod jobs;
pub mod webhooks;
