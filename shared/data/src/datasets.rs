//! Datasets: per-tenant collections of imported rows.
//!
//! A dataset is named by its tenant and a validated name (`[a-z0-9_]{1,48}`). Its rows live in
//! a collection whose name is derived from a hash of `(tenant, name)` (`ds_<24 hex>`), so no
//! user input ever reaches a collection name and two tenants can never share one. The
//! `datasets` collection is the registry: name, collection, and a `generation` bumped by every
//! finished import (the cache uses it to know its copy is stale).
//!
//! Every row has a string `_id` (`<file>:<row>` without an import key, the key's value with
//! one), which is what listings sort and seek on.

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use jobmill::error::Result;
use jobmill::job::now_ms;

/// The registry collection.
pub const DATASETS: &str = "datasets";
/// Longest dataset name.
pub const MAX_NAME: usize = 48;

/// One dataset of one tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dataset {
    /// `<tenant>/<name>`.
    #[serde(rename = "_id")]
    pub id: String,
    /// Owner.
    pub tenant: String,
    /// Name.
    pub name: String,
    /// Collection holding the rows.
    pub collection: String,
    /// Bumped by every finished import.
    pub generation: i64,
    /// Creation time.
    pub created_ms: i64,
}

/// The JSON Schema pattern of a dataset name, the same rule as [`check_name`].
pub const NAME_PATTERN: &str = "^[a-z0-9_]{1,48}$";

/// Check a dataset name.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "dataset name '{}' must be 1-{MAX_NAME} characters of a-z, 0-9 and _",
            name.chars().take(60).collect::<String>()
        ))
    }
}

/// The collection name of a dataset: a hash, never user input.
pub fn collection_name(tenant: &str, name: &str) -> String {
    let h = Sha256::digest(format!("{tenant}\u{0}{name}").as_bytes());
    format!("ds_{}", &hex::encode(h)[..24])
}

/// Handle to the datasets. Cheap to clone.
#[derive(Clone)]
pub struct Datasets {
    db: Database,
    registry: Collection<Dataset>,
}

impl Datasets {
    /// The datasets in `db`.
    pub fn new(db: &Database) -> Self {
        Datasets {
            db: db.clone(),
            registry: db.collection(DATASETS),
        }
    }

    /// The dataset, created if new (idempotent).
    pub async fn ensure(&self, tenant: &str, name: &str) -> Result<Dataset> {
        let id = format!("{tenant}/{name}");
        self.registry
            .update_one(
                doc! { "_id": &id },
                doc! { "$setOnInsert": {
                    "tenant": tenant,
                    "name": name,
                    "collection": collection_name(tenant, name),
                    "generation": 0_i64,
                    "created_ms": now_ms(),
                } },
            )
            .upsert(true)
            .await?;
        Ok(self
            .registry
            .find_one(doc! { "_id": &id })
            .await?
            .expect("just upserted"))
    }

    /// A tenant's dataset.
    pub async fn get(&self, tenant: &str, name: &str) -> Result<Option<Dataset>> {
        Ok(self
            .registry
            .find_one(doc! { "_id": format!("{tenant}/{name}") })
            .await?)
    }

    /// A tenant's datasets with their row counts, by name.
    pub async fn list(&self, tenant: &str) -> Result<Vec<(Dataset, u64)>> {
        let mut all: Vec<Dataset> = self
            .registry
            .find(doc! { "tenant": tenant })
            .await?
            .try_collect()
            .await?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = Vec::with_capacity(all.len());
        for d in all {
            let n = self.rows_of(&d).count_documents(doc! {}).await?;
            out.push((d, n));
        }
        Ok(out)
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The rows collection of a dataset.
    pub fn rows_of(&self, d: &Dataset) -> Collection<Document> {
        self.db.collection(&d.collection)
    }

    /// Rows with `_id` after `after`, in `_id` order (seek pagination on the `_id` index).
    pub async fn rows_after(
        &self,
        d: &Dataset,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Document>> {
        // Always filter: the compatible server sorts some types textually without a filter.
        Ok(self
            .rows_of(d)
            .find(doc! { "_id": { "$gt": after.unwrap_or("") } })
            .sort(doc! { "_id": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?)
    }

    /// Page `n` (from 0) of `size` rows in `_id` order. Uses skip: only for the first few pages
    /// a cache holds, and for cache misses of those.
    pub async fn page(&self, d: &Dataset, n: u64, size: i64) -> Result<Vec<Document>> {
        Ok(self
            .rows_of(d)
            .find(doc! { "_id": { "$gt": "" } })
            .sort(doc! { "_id": 1 })
            .skip(n * size as u64)
            .limit(size)
            .await?
            .try_collect()
            .await?)
    }

    /// Record that an import changed the dataset.
    pub async fn bump_generation(&self, d: &Dataset) -> Result<()> {
        self.registry
            .update_one(
                doc! { "_id": &d.id },
                doc! { "$inc": { "generation": 1_i64 } },
            )
            .await?;
        Ok(())
    }
}

/// A row as JSON (relaxed extended JSON: numbers stay numbers).
pub fn row_json(d: Document) -> serde_json::Value {
    Bson::Document(d).into_relaxed_extjson()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(check_name("orders_2024").is_ok());
        for bad in ["", "Orders", "a.b", "a$b", "a b", "x/../y", &"a".repeat(49)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn collections_differ_per_tenant_and_name() {
        assert_ne!(collection_name("a_b", "c"), collection_name("a", "b_c"));
        assert_ne!(collection_name("alice", "x"), collection_name("bob", "x"));
        assert!(collection_name("t", "n").starts_with("ds_"));
    }
}
