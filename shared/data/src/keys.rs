//! Every Redis key of the data feature: the page cache's. Built under the deployment's prefix
//! (the engine's [`Keys::feature`]).

use jobmill::keys::Keys;

/// The data feature's key builder.
#[derive(Debug, Clone)]
pub struct DataKeys {
    base: String,
}

/// The cache keys of one dataset (see [`DataKeys::cache`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKeys {
    /// STRING: the version readers use now.
    pub current: String,
    /// STRING: the job id of the queued or running rebuild (`pending:<nonce>` while it is
    /// being submitted); the single-flight marker.
    pub rebuild: String,
    /// Prefix of the version HASHes (page number → page JSON, plus `pages`).
    version_prefix: String,
}

impl CacheKeys {
    /// HASH of one version: field `<n>` = page n as JSON, field `pages` = pages written.
    pub fn version(&self, version: &str) -> String {
        format!("{}{version}", self.version_prefix)
    }
}

impl DataKeys {
    /// The data keys of a deployment.
    pub fn new(keys: &Keys) -> Self {
        DataKeys {
            base: keys.feature("cache"),
        }
    }

    /// The cache keys of one dataset's pages. They share the hash tag `{tenant/dataset}`, so
    /// the swap script stays on one Redis Cluster slot.
    pub fn cache(&self, tenant: &str, dataset: &str) -> CacheKeys {
        let base = format!("{}:{{{tenant}/{dataset}}}", self.base);
        CacheKeys {
            current: format!("{base}:current"),
            rebuild: format!("{base}:rebuild"),
            version_prefix: format!("{base}:v"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobmill::keys::hash_tag;

    #[test]
    fn cache_keys_share_the_dataset_hash_tag() {
        let k = DataKeys::new(&Keys::new("jm")).cache("alice", "orders");
        for key in [&k.current, &k.rebuild, &k.version("7")] {
            assert_eq!(hash_tag(key), "alice/orders", "{key}");
        }
        assert!(k.current.starts_with("jm:cache:"), "{}", k.current);
        assert_ne!(
            k.current,
            DataKeys::new(&Keys::new("jm"))
                .cache("bob", "orders")
                .current
        );
    }
}
