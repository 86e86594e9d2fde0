//! The job kinds that ship with jobmill. One file per kind; add yours beside them and register
//! it in [`register_builtin`] (or in your own binary's registry).

mod fail;
mod noop;
mod sleep;
mod webhook_delivery;

pub use fail::Fail;
pub use noop::Noop;
pub use sleep::Sleep;
pub use webhook_delivery::WebhookDelivery;

use crate::kind::Registry;

/// Register every built-in kind.
pub fn register_builtin(r: &mut Registry) {
    r.register(Noop)
        .register(Sleep)
        .register(Fail)
        .register(WebhookDelivery);
}
