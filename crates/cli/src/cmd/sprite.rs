//! `wisp sprite`: the client commands. Each one is a call on the daemon's
//! REST API (`wisp server`), the same API the Sprites SDKs speak.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use wisp_control::client::Client;
use wisp_control::model::SpriteView;
use wisp_control::registry::UrlAuth;

use crate::config::GlobalArgs;
use crate::table::Align::{Left, Right};
use crate::table::Table;

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
    /// The server's token (default: the file $WISP_HOME/token, when there is one).
    #[arg(long, global = true, env = "WISP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
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
    /// Create a sprite as a fork of another: `SOURCE` (its current state, taken as a
    /// live checkpoint) or `SOURCE@v3` (a checkpoint). Copy-on-write: milliseconds.
    Fork {
        /// `SOURCE` or `SOURCE@CHECKPOINT`.
        source: String,
        name: String,
        /// Let anyone reach the fork's URL (default: token holders only).
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
    /// Change when a sprite sleeps and what it keeps.
    Set {
        name: String,
        /// Sleep (warm) after this long without a request: like 30s, 5m, or `never`;
        /// `default` for the server's.
        #[arg(long)]
        idle_timeout: Option<String>,
        /// Go from warm to cold after this long (`never`, `default`).
        #[arg(long)]
        cold_after: Option<String>,
        /// Keep the memory in the bucket when going cold (any host resumes it warm).
        #[arg(long)]
        keep_memory: Option<bool>,
    },
    /// Put a sprite to sleep now: warm (memory kept; the next request resumes it)
    /// unless --cold.
    Sleep {
        name: String,
        /// Drop the memory (or keep it in the bucket with keep-memory).
        #[arg(long)]
        cold: bool,
    },
    /// Wake a sprite now (resuming it where it slept when warm).
    Wake { name: String },
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
    /// The files added (A), changed (C) and deleted (D) from checkpoint FROM to
    /// checkpoint TO, or to the current state; read on the host, nothing woken.
    Diff {
        name: String,
        from: String,
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a checkpoint (refused while the sprite's current state or a fork
    /// stands on it); the next gc frees the data only it held.
    DeleteCheckpoint { name: String, checkpoint: String },
    /// List a sprite's services (waking it).
    Services {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Create or replace a service: started now, at every boot, and again when it dies.
    ServiceSet {
        name: String,
        service: String,
        /// The program and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Stop and remove a service.
    ServiceRm { name: String, service: String },
    /// Copy a file to or from a sprite: `NAME:/path` on one side, a local path or
    /// `-` (stdin/stdout) on the other. Streamed: any size.
    Cp { src: String, dst: String },
    /// Forward 127.0.0.1:LOCAL to PORT in a sprite (`PORT[:LOCAL]`), until Ctrl-C.
    Proxy {
        /// The sprite (default: the one `wisp sprite use` chose here).
        #[arg(value_name = "NAME")]
        name_or_ports: String,
        /// `PORT[:LOCAL]` (when NAME is given).
        ports: Option<String>,
    },
    /// Print a sprite's URL and who may reach it.
    Url {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Make NAME the sprite of this folder (and those below): a `.wisp` file that
    /// later commands read when no name is given. Without NAME, print it.
    Use { name: Option<String> },
    /// Open a shell on a terminal in a sprite (its user's login shell).
    Console { name: Option<String> },
    /// A sprite's exec sessions: commands that outlive their connection.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Keep-awake tasks: while one lives the sprite does not sleep; each expires
    /// by itself unless refreshed.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Run a command in a sprite, waking it if it sleeps; exits with the command's code.
    Exec {
        /// The sprite (default: the one `wisp sprite use` chose here).
        name: Option<String>,
        /// Pass stdin through to the command.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Run the command on a terminal (PTY) in the sprite.
        #[arg(short = 't', long)]
        tty: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// List a sprite's live tasks (none while it sleeps).
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Create or refresh (heartbeat) a task; wakes the sprite.
    Set {
        name: String,
        task: String,
        /// How long it lives from now, like 10m (the default) or 1h (at most).
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// End a task.
    Rm { name: String, task: String },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List a sprite's sessions (running, and ended a minute ago at most).
    List {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Attach to a session: its recent output, then live, with this terminal.
    Attach {
        /// `[NAME] ID`: the sprite (default: this folder's) and the session.
        #[arg(num_args = 1..=2, required = true, value_name = "[NAME] ID")]
        args: Vec<String>,
    },
    /// End a session: the signal, then SIGKILL after 10 s.
    Kill {
        #[arg(num_args = 1..=2, required = true, value_name = "[NAME] ID")]
        args: Vec<String>,
        /// Signal name or number.
        #[arg(long, default_value = "TERM")]
        signal: String,
    },
}

/// The file `wisp sprite use` writes.
const USE_FILE: &str = ".wisp";

/// The sprite a command is about: `name`, else the `.wisp` file of this folder
/// or the nearest one above it.
fn sprite_name(name: Option<String>) -> anyhow::Result<String> {
    if let Some(name) = name {
        return Ok(name);
    }
    let here = std::env::current_dir()?;
    for dir in here.ancestors() {
        if let Ok(text) = std::fs::read_to_string(dir.join(USE_FILE)) {
            let name = text.trim().to_string();
            wisp_control::sprites::validate_name(&name)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(USE_FILE).display()))?;
            return Ok(name);
        }
    }
    anyhow::bail!("give a sprite name, or choose one for this folder with `wisp sprite use NAME`")
}

/// `[NAME] ID` of the sessions commands.
fn name_and_id(args: Vec<String>) -> anyhow::Result<(String, String)> {
    match <[String; 2]>::try_from(args) {
        Ok([name, id]) => Ok((name, id)),
        Err(args) => Ok((
            sprite_name(None)?,
            args.into_iter().next().unwrap_or_default(),
        )),
    }
}

/// A JSON value as a table cell: a string without its quotes, nothing for null.
fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
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
    let seconds = |s: Option<u64>| s.map_or("never".to_string(), |s| format!("{s}s"));
    println!(
        "sleep:      after {} idle; cold {} later; keep memory: {}",
        seconds(sprite.sleep.idle_timeout),
        seconds(sprite.sleep.cold_after),
        if sprite.sleep.keep_memory {
            "yes"
        } else {
            "no"
        }
    );
    if let Some(memory) = &sprite.sleep.memory {
        println!("memory:     kept ({memory})");
    }
    if let Some(source) = &sprite.source {
        println!("forked from: {}@{}", source.sprite, source.checkpoint);
    }
}

pub async fn run(global: &GlobalArgs, args: SpriteArgs) -> anyhow::Result<ExitCode> {
    let token = args.token.clone().or_else(|| {
        std::fs::read_to_string(global.home.join("token"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    });
    let client = Client::new(&args.api).with_token(token);
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
        SpriteCommand::Fork {
            source,
            name,
            public,
        } => {
            let auth = if public {
                UrlAuth::Public
            } else {
                UrlAuth::Sprite
            };
            let (from, checkpoint) = match source.split_once('@') {
                Some((s, c)) => (s, Some(c)),
                None => (source.as_str(), None),
            };
            let sprite = client.fork(&name, from, checkpoint, auth).await?;
            let origin = sprite
                .source
                .as_ref()
                .map(|s| format!("{}@{}", s.sprite, s.checkpoint))
                .unwrap_or_default();
            println!(
                "forked sprite {} from {origin} ({})",
                sprite.name, sprite.url
            );
        }
        SpriteCommand::List { prefix, json } => {
            let sprites = client.list(&prefix).await?;
            if json {
                print_json(&sprites)?;
            } else {
                let mut table = Table::new(&[
                    ("NAME", Left),
                    ("STATUS", Left),
                    ("AUTH", Left),
                    ("CREATED", Left),
                    ("URL", Left),
                ]);
                for s in &sprites {
                    table.row([
                        &s.name,
                        &s.status,
                        &s.url_settings.auth.to_string(),
                        &s.created_at,
                        &s.url,
                    ]);
                }
                table.print();
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
        SpriteCommand::Set {
            name,
            idle_timeout,
            cold_after,
            keep_memory,
        } => {
            let mut changes = serde_json::Map::new();
            for (field, value) in [("idle_timeout", idle_timeout), ("cold_after", cold_after)] {
                if let Some(v) = value {
                    let v = if v == "default" {
                        serde_json::Value::Null
                    } else {
                        serde_json::Value::String(v)
                    };
                    changes.insert(field.into(), v);
                }
            }
            if let Some(keep) = keep_memory {
                changes.insert("keep_memory".into(), keep.into());
            }
            if changes.is_empty() {
                anyhow::bail!("nothing to set: give --idle-timeout, --cold-after or --keep-memory");
            }
            let sprite = client.update(&name, changes.into()).await?;
            print_sprite(&sprite);
        }
        SpriteCommand::Sleep { name, cold } => {
            let sprite = client.sleep(&name, cold).await?;
            println!("sprite {}: {}", sprite.name, sprite.status);
        }
        SpriteCommand::Wake { name } => {
            let sprite = client.wake(&name).await?;
            println!("sprite {}: {}", sprite.name, sprite.status);
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
                let mut table = Table::new(&[("ID", Left), ("CREATED", Left), ("COMMENT", Left)]);
                for c in &list {
                    table.row([&c.id, &c.create_time, &c.comment]);
                }
                table.print();
            }
        }
        SpriteCommand::Restore { name, checkpoint } => {
            println!("{}", client.restore(&name, &checkpoint).await?);
        }
        SpriteCommand::Diff {
            name,
            from,
            to,
            json,
        } => {
            let diff = client.diff(&name, &from, to.as_deref()).await?;
            if json {
                print_json(&diff)?;
            } else {
                for c in &diff.changes {
                    let mark = match c.kind.as_str() {
                        "added" => 'A',
                        "deleted" => 'D',
                        _ => 'C',
                    };
                    println!("{mark} {}", c.path);
                }
            }
        }
        SpriteCommand::DeleteCheckpoint { name, checkpoint } => {
            client.delete_checkpoint(&name, &checkpoint).await?;
            println!("deleted checkpoint {checkpoint} of sprite {name}");
        }
        SpriteCommand::Services { name, json } => {
            let services = client.services(&name).await?;
            if json {
                print_json(&services)?;
            } else {
                let mut table = Table::new(&[
                    ("NAME", Left),
                    ("STATUS", Left),
                    ("PID", Right),
                    ("RESTARTS", Right),
                    ("COMMAND", Left),
                ]);
                for s in &services {
                    let pid = s
                        .state
                        .pid
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into());
                    let command = std::iter::once(s.cmd.as_str())
                        .chain(s.args.iter().map(String::as_str))
                        .collect::<Vec<_>>()
                        .join(" ");
                    table.row([
                        s.name.clone(),
                        s.state.status.clone(),
                        pid,
                        s.state.restart_count.to_string(),
                        command,
                    ]);
                }
                table.print();
            }
        }
        SpriteCommand::ServiceSet {
            name,
            service,
            command,
        } => {
            let s = client.put_service(&name, &service, &command).await?;
            println!("service {} of sprite {name}: {}", s.name, s.state.status);
        }
        SpriteCommand::ServiceRm { name, service } => {
            client.delete_service(&name, &service).await?;
            println!("removed service {service} of sprite {name}");
        }
        SpriteCommand::Exec {
            name,
            interactive,
            tty,
            command,
        } => {
            let options = exec_options(command, tty, None);
            return exec(&client, &sprite_name(name)?, interactive, options).await;
        }
        SpriteCommand::Console { name } => {
            let options = exec_options(Vec::new(), true, None);
            return exec(&client, &sprite_name(name)?, true, options).await;
        }
        SpriteCommand::Cp { src, dst } => {
            return crate::cmd::transfer::cp(&client, &src, &dst).await
        }
        SpriteCommand::Proxy {
            name_or_ports,
            ports,
        } => {
            let (name, ports) = match ports {
                Some(ports) => (name_or_ports, ports),
                None => (sprite_name(None)?, name_or_ports),
            };
            return crate::cmd::transfer::proxy(client, name, &ports).await;
        }
        SpriteCommand::Url { name, json } => {
            let sprite = client.get(&sprite_name(name)?).await?;
            if json {
                print_json(&serde_json::json!({
                    "name": sprite.name,
                    "url": sprite.url,
                    "auth": sprite.url_settings.auth,
                }))?;
            } else {
                println!("{}", sprite.url);
                eprintln!("(url auth: {})", sprite.url_settings.auth);
            }
        }
        SpriteCommand::Use { name: None } => println!("{}", sprite_name(None)?),
        SpriteCommand::Use { name: Some(name) } => {
            let sprite = client.get(&name).await?;
            std::fs::write(USE_FILE, format!("{}\n", sprite.name))?;
            println!(
                "sprite {} is this folder's (written to {USE_FILE})",
                sprite.name
            );
        }
        SpriteCommand::Tasks(TasksCommand::List { name, json }) => {
            let tasks = client.tasks(&name).await?;
            if json {
                print_json(&tasks)?;
            } else {
                let mut table = Table::new(&[
                    ("TASK", Left),
                    ("TTL", Right),
                    ("EXPIRES IN", Right),
                    ("DESCRIPTION", Left),
                ]);
                for t in tasks {
                    table.row([
                        text(&t["name"]),
                        format!("{}s", text(&t["ttl_secs"])),
                        format!("{}s", text(&t["expires_in_secs"])),
                        text(&t["description"]),
                    ]);
                }
                table.print();
            }
        }
        SpriteCommand::Tasks(TasksCommand::Set {
            name,
            task,
            ttl,
            description,
        }) => {
            let t = client
                .set_task(&name, &task, ttl.as_deref(), description.as_deref())
                .await?;
            println!(
                "task {} on sprite {name}: expires in {}s",
                t["name"].as_str().unwrap_or(&task),
                t["expires_in_secs"]
            );
        }
        SpriteCommand::Tasks(TasksCommand::Rm { name, task }) => {
            client.delete_task(&name, &task).await?;
            println!("task {task} on sprite {name} ended");
        }
        SpriteCommand::Sessions(SessionsCommand::List { name, json }) => {
            let sessions = client.sessions(&sprite_name(name)?).await?;
            if json {
                print_json(&sessions)?;
            } else {
                let mut table = Table::new(&[
                    ("ID", Left),
                    ("STATE", Left),
                    ("TTY", Left),
                    ("CREATED", Left),
                    ("COMMAND", Left),
                ]);
                for s in &sessions {
                    let state = if s["is_active"] == true {
                        "running"
                    } else {
                        "ended"
                    };
                    let tty = if s["tty"] == true { "yes" } else { "no" };
                    table.row([
                        text(&s["id"]),
                        state.into(),
                        tty.into(),
                        text(&s["created"]),
                        text(&s["command"]),
                    ]);
                }
                table.print();
            }
        }
        SpriteCommand::Sessions(SessionsCommand::Attach { args }) => {
            let (name, id) = name_and_id(args)?;
            let listed = client.sessions(&name).await?;
            let session = listed
                .iter()
                .find(|s| s["id"] == id.as_str())
                .ok_or_else(|| anyhow::anyhow!("sprite `{name}` has no exec session `{id}`"))?;
            let tty = session["tty"] == true;
            let options = exec_options(Vec::new(), tty, Some(id));
            return exec(&client, &name, true, options).await;
        }
        SpriteCommand::Sessions(SessionsCommand::Kill { args, signal }) => {
            let (name, id) = name_and_id(args)?;
            print!("{}", client.kill_session(&name, &id, &signal).await?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The next SIGWINCH, or never without a terminal.
async fn next_resize(winch: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match winch {
        Some(w) => w.recv().await,
        None => std::future::pending().await,
    }
}

/// What `wisp sprite exec`, `console` and `sessions attach` ask for: `argv`
/// (empty: the login shell), a terminal the size of this one.
fn exec_options(
    argv: Vec<String>,
    tty: bool,
    attach: Option<String>,
) -> wisp_control::client::ExecOptions {
    use std::os::fd::AsRawFd;
    let stdin_fd = std::io::stdin().as_raw_fd();
    wisp_control::client::ExecOptions {
        argv,
        attach,
        tty: tty.then(|| wisp_vm::terminal::size(stdin_fd).unwrap_or((24, 80))),
        stdin: false,
    }
}

/// `wisp sprite exec`: local stdio to and from the command, like `wisp vm run`
/// but through the daemon (the sprite keeps running afterwards).
async fn exec(
    client: &Client,
    name: &str,
    interactive: bool,
    mut options: wisp_control::client::ExecOptions,
) -> anyhow::Result<ExitCode> {
    use std::os::fd::AsRawFd;
    use wisp_control::client::ExecOutput;

    let stdin_fd = std::io::stdin().as_raw_fd();
    let tty = options.tty.is_some();
    options.stdin = interactive;
    let (sender, mut receiver) = client.exec(name, &options).await?;
    let _raw = if tty && interactive {
        wisp_vm::terminal::RawMode::enable(stdin_fd)
    } else {
        None
    };
    let rx = if interactive {
        crate::stdio::stdin_chunks()
    } else {
        // No stdin: a closed channel, so the pump ends it at once.
        tokio::sync::mpsc::channel(1).1
    };
    let winch = if tty {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
    } else {
        None
    };
    let pump = send_input(sender, rx, winch, stdin_fd);
    let output = async {
        let mut output = crate::stdio::Output::new();
        loop {
            match receiver.recv().await? {
                Some(ExecOutput::Stdout(d)) => output.stdout(&d).await?,
                Some(ExecOutput::Stderr(d)) => output.stderr(&d).await?,
                Some(ExecOutput::Exit(code)) => {
                    return anyhow::Ok(ExitCode::from((code & 0xff) as u8))
                }
                None => {
                    anyhow::bail!("the connection to sprite `{name}` ended without an exit code")
                }
            }
        }
    };
    tokio::select! {
        code = output => code,
        pumped = pump => match pumped {
            Ok(never) => match never {},
            Err(e) => Err(e),
        },
    }
}

/// Stdin and terminal resizes to the sprite for as long as the command runs;
/// returns only when sending fails.
async fn send_input(
    mut sender: wisp_control::client::ExecSender,
    mut stdin: tokio::sync::mpsc::Receiver<Vec<u8>>,
    mut winch: Option<tokio::signal::unix::Signal>,
    stdin_fd: std::os::fd::RawFd,
) -> anyhow::Result<std::convert::Infallible> {
    let mut stdin_open = true;
    loop {
        tokio::select! {
            chunk = stdin.recv(), if stdin_open => match chunk {
                Some(data) => sender.stdin(&data).await?,
                None => {
                    sender.close_stdin().await?;
                    stdin_open = false;
                }
            },
            Some(()) = next_resize(&mut winch) => {
                if let Some((rows, cols)) = wisp_vm::terminal::size(stdin_fd) {
                    sender.resize(rows, cols).await?;
                }
            }
            else => std::future::pending::<()>().await,
        }
    }
}
