//! The operator plane's Redis names. The pause flag is not here: `claim.lua` reads it, so it is
//! an engine queue key ([`jobmill::keys::QueueKeys::paused`]).

use jobmill::keys::Keys;

/// Channel on which one worker hears operator commands (payload: a [`crate::workers::Command`]).
/// One channel per worker, so every API replica reaches it with a single `PUBLISH`.
pub fn control_channel(keys: &Keys, worker: &str) -> String {
    keys.feature(&format!("ops:control:{worker}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_channels_are_per_worker_and_prefixed() {
        let k = Keys::new("jm");
        assert_eq!(control_channel(&k, "h:1:ab"), "jm:ops:control:h:1:ab");
        assert_ne!(control_channel(&k, "a"), control_channel(&k, "b"));
    }
}
