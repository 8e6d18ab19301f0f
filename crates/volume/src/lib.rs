//! The volume engine: thin-provisioned block volumes whose data lives in an
//! object store as immutable segments and whose block map lives in SQLite,
//! shipped to the same bucket. See `docs/STORAGE.md`.

mod checkpoints;
mod config;
mod error;
mod gc;
mod lease;
mod meta;
mod reader;
mod retrying_store;
mod ship;
mod store;
mod transfer;
mod volume;

pub use checkpoints::Dependant;
pub use config::{
    CheckpointInfo, Compression, Durability, GcOptions, GcReport, StoreConfig, SyncReport,
    VolumeInfo,
};
pub use error::VolumeError;
pub use lease::format_time;
pub use reader::CheckpointReader;
pub use retrying_store::open_url;
pub use store::{Store, CHUNK_SIZE, FORMAT_VERSION};
pub use volume::Volume;
