//! The job kinds that ship with jobmill. One file per kind; add yours beside them and register
//! it in [`register_builtin`] (or in your own binary's registry).

mod bulk_import;
mod cache_rebuild;
mod fail;
mod file_assembly;
mod noop;
mod sleep;
mod webhook_delivery;

pub use bulk_import::BulkImport;
pub use cache_rebuild::CacheRebuild;
pub use fail::Fail;
pub use file_assembly::{check_parts, FileAssembly};
pub use noop::Noop;
pub use sleep::Sleep;
pub use webhook_delivery::WebhookDelivery;

use crate::kind::Registry;

/// Register every built-in kind.
pub fn register_builtin(r: &mut Registry) {
    r.register(Noop)
        .register(Sleep)
        .register(Fail)
        .register(FileAssembly)
        .register(BulkImport)
        .register(CacheRebuild)
        .register(WebhookDelivery);
}
