//! `wisp sprite`: the client commands. Each one is a call on the daemon's
//! REST API (`wisp server`), the same API the Sprites SDKs speak.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use wisp_control::client::Client;
use wisp_control::model::SpriteView;
use wisp_control::registry::UrlAuth;

#[derive(Debug, Args)]
pub struct SpriteArgs {
    /// Base URL of the wisp server.
    #[arg(
        long,
        global = true,
        env = "WISP_API",
        default_value = "http://127.0.0.1:7070"
    )]
    pub api: String,
    #[command(subcommand)]
    pub command: SpriteCommand,
}

#[derive(Debug, Subcommand)]
pub enum SpriteCommand {
    /// Create a sprite: a copy-on-write fork of the standard image (cold until used).
    Create {
        name: String,
        /// Let anyone reach the sprite's URL (default: token holders only).
        #[arg(long)]
        public: bool,
    },
    /// List sprites, by name.
    List {
        /// Only names starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one sprite.
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Set who may reach a sprite's URL: `sprite` (token holders) or `public`.
    SetAuth { name: String, auth: UrlAuth },
    /// Delete a sprite with its disk and checkpoints.
    #[command(alias = "destroy")]
    Delete { name: String },
    /// Freeze a sprite's disk as its next checkpoint (v0, v1, ...).
    Checkpoint {
        name: String,
        /// A note kept with the checkpoint.
        #[arg(short, long)]
        message: Option<String>,
    },
    /// List a sprite's checkpoints, newest first.
    Checkpoints {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Make a sprite's disk equal to a checkpoint again (later checkpoints stay).
    Restore { name: String, checkpoint: String },
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_sprite(sprite: &SpriteView) {
    println!("name:       {}", sprite.name);
    println!("id:         {}", sprite.id);
    println!("status:     {}", sprite.status);
    println!("url:        {}", sprite.url);
    println!("url auth:   {}", sprite.url_settings.auth);
    println!("created:    {}", sprite.created_at);
    println!("updated:    {}", sprite.updated_at);
}

pub async fn run(args: SpriteArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.api);
    match args.command {
        SpriteCommand::Create { name, public } => {
            let auth = if public {
                UrlAuth::Public
            } else {
                UrlAuth::Sprite
            };
            let sprite = client.create(&name, auth).await?;
            println!("created sprite {} ({})", sprite.name, sprite.url);
        }
        SpriteCommand::List { prefix, json } => {
            let sprites = client.list(&prefix).await?;
            if json {
                print_json(&sprites)?;
            } else {
                println!(
                    "{:<24} {:<8} {:<8} {:<21} URL",
                    "NAME", "STATUS", "AUTH", "CREATED"
                );
                for s in &sprites {
                    println!(
                        "{:<24} {:<8} {:<8} {:<21} {}",
                        s.name, s.status, s.url_settings.auth, s.created_at, s.url
                    );
                }
            }
        }
        SpriteCommand::Info { name, json } => {
            let sprite = client.get(&name).await?;
            if json {
                print_json(&sprite)?;
            } else {
                print_sprite(&sprite);
            }
        }
        SpriteCommand::SetAuth { name, auth } => {
            let sprite = client.set_url_auth(&name, auth).await?;
            println!(
                "sprite {}: url auth {}",
                sprite.name, sprite.url_settings.auth
            );
        }
        SpriteCommand::Delete { name } => {
            client.delete(&name).await?;
            println!("deleted sprite {name}");
        }
        SpriteCommand::Checkpoint { name, message } => {
            println!("{}", client.checkpoint(&name, message.as_deref()).await?);
        }
        SpriteCommand::Checkpoints { name, json } => {
            let list = client.checkpoints(&name).await?;
            if json {
                print_json(&list)?;
            } else {
                println!("{:<6} {:<21} COMMENT", "ID", "CREATED");
                for c in &list {
                    println!("{:<6} {:<21} {}", c.id, c.create_time, c.comment);
                }
            }
        }
        SpriteCommand::Restore { name, checkpoint } => {
            println!("{}", client.restore(&name, &checkpoint).await?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
