//! HTTP handlers, one file per resource.

pub mod actions;
pub mod audit;
pub mod datasets;
pub mod deliveries;
pub mod events;
pub mod files;
pub mod health;
pub mod jobs;
pub mod kinds;
pub mod metrics;
pub mod queues;
pub mod schedules;
pub mod uploads;
pub mod webhooks;
pub mod workers;
