//! Settings shared by every subcommand. Precedence: flag > `WISP_*`
//! environment variable > default.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Where wisp keeps its local state (cache, registry, kernel, images).
    #[arg(long, global = true, env = "WISP_HOME", default_value = ".wisp")]
    pub home: PathBuf,
    /// Object store for volume data and metadata: `file:///path`, `s3://bucket/prefix`
    /// (endpoint and credentials from `AWS_*` variables) or `memory://`.
    /// Default: a local folder store under `$WISP_HOME/store`.
    #[arg(long, global = true, env = "WISP_STORE")]
    pub store: Option<String>,
}

impl GlobalArgs {
    /// The object store URL in force.
    pub fn store_url(&self) -> anyhow::Result<String> {
        match &self.store {
            Some(url) => Ok(url.clone()),
            None => {
                let dir = self.home.join("store");
                std::fs::create_dir_all(&dir).map_err(|e| {
                    anyhow::anyhow!("cannot create store folder `{}`: {e}", dir.display())
                })?;
                let dir = dir.canonicalize()?;
                Ok(format!("file://{}", dir.display()))
            }
        }
    }
}

/// Opens the volume store in force, caching volumes under `$WISP_HOME/cache`.
pub async fn open_store(global: &GlobalArgs) -> anyhow::Result<wisp_volume::Store> {
    let url = global.store_url()?;
    let config = wisp_volume::StoreConfig::new(url.clone(), global.home.join("cache"));
    wisp_volume::Store::open(config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open store `{url}`: {e}"))
}
