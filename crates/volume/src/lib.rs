//! The volume engine: thin-provisioned block volumes whose data lives in an
//! object store as immutable segments and whose block map lives in SQLite,
//! shipped to the same bucket. See `docs/STORAGE.md`.
