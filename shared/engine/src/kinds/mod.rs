//! The engine's own job kinds: side-effect free, for smoke tests and benchmarks. One file per
//! kind; a user's kinds live in their own crate (see `examples/custom-kind`).

mod fail;
mod noop;
mod sleep;
mod throttled;

pub use fail::{Fail, FailMode};
pub use noop::Noop;
pub use sleep::{OnCancel, Sleep};
pub use throttled::Throttled;

use crate::kind::Registry;

/// Register `noop`, `sleep`, `fail` and `throttled`.
pub fn register_builtin(r: &mut Registry) {
    r.register(Noop)
        .register(Sleep)
        .register(Fail)
        .register(Throttled);
}
