//! The engine's own job kinds: side-effect free, for smoke tests and benchmarks. One file per
//! kind; a user's kinds live in their own crate (see `examples/custom-kind`).

mod fail;
mod noop;
mod sleep;

pub use fail::{Fail, FailMode};
pub use noop::Noop;
pub use sleep::{OnCancel, Sleep};

use crate::kind::Registry;

/// Register `noop`, `sleep` and `fail`.
pub fn register_builtin(r: &mut Registry) {
    r.register(Noop).register(Sleep).register(Fail);
}
