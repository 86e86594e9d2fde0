//! Datasets (placeholder until bulk_import lands).
