//! The data feature's job kinds, one file each.

mod bulk_import;
mod cache_rebuild;
mod file_assembly;

pub use bulk_import::{BulkImport, BulkImportArgs, FieldType, Format};
pub use cache_rebuild::{CacheRebuild, CacheRebuildArgs};
pub use file_assembly::{check_parts, FileAssembly, FileAssemblyArgs, PIECES_PER_READ};
