//! Keep-awake tasks (held by the guest's agent, so they live exactly as long as the
//! sprite's run) and the requests programs in the guest make of the host through
//! the in-sprite API (`/.sprite/api.sock`): a checkpoint, the checkpoint list.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use wisp_vm::agent::{AgentError, GuestRequest, TaskInfo};

use crate::machines::Awake;
use crate::model::CheckpointView;
use crate::{ControlError, Sprites};

/// Whether a live keep-awake task holds sprite `awake` up. An agent that does
/// not answer holds nothing (it cannot be doing useful work).
pub(crate) async fn held_awake(awake: &Awake) -> bool {
    let tasks = tokio::time::timeout(Duration::from_secs(5), awake.agent().tasks()).await;
    matches!(tasks, Ok(Ok(t)) if !t.is_empty())
}

fn agent_error(name: &str, e: AgentError) -> ControlError {
    match e {
        AgentError::Os { errno, message } if errno == "ENOENT" => ControlError::NotFound(message),
        AgentError::Remote(message) if message.starts_with("bad task") => {
            ControlError::BadRequest(message)
        }
        AgentError::Os { message, .. } if message.starts_with("bad task") => {
            ControlError::BadRequest(message)
        }
        e => ControlError::Unavailable(format!("sprite `{name}`'s agent: {e}")),
    }
}

impl Sprites {
    /// Sprite `name`'s live keep-awake tasks; none while it sleeps (a sprite
    /// sleeps only when it has none, and sleeping does not wake it).
    pub async fn tasks(&self, name: &str) -> Result<Vec<TaskInfo>, ControlError> {
        self.get(name)?;
        match self.machines.get(name) {
            Some(awake) => awake
                .agent()
                .tasks()
                .await
                .map_err(|e| agent_error(name, e)),
            None => Ok(Vec::new()),
        }
    }

    /// Creates or refreshes keep-awake task `task` on sprite `name`, waking it.
    pub async fn set_task(
        self: &Arc<Self>,
        name: &str,
        task: &str,
        ttl: Duration,
        description: Option<String>,
    ) -> Result<TaskInfo, ControlError> {
        let activity = self.activity(name).await?;
        let tasks = activity
            .agent()
            .set_task(task, ttl.as_secs().max(1), description)
            .await
            .map_err(|e| agent_error(name, e))?;
        tasks
            .into_iter()
            .find(|t| t.name == task)
            .ok_or_else(|| ControlError::Unavailable(format!("task `{task}` expired at once")))
    }

    /// Ends keep-awake task `task` of sprite `name` (not found when it sleeps:
    /// its tasks had all ended).
    pub async fn delete_task(&self, name: &str, task: &str) -> Result<(), ControlError> {
        self.get(name)?;
        let Some(awake) = self.machines.get(name) else {
            return Err(ControlError::NotFound(format!(
                "sprite `{name}` has no task `{task}`: it sleeps"
            )));
        };
        awake
            .agent()
            .delete_task(task)
            .await
            .map(|_| ())
            .map_err(|e| agent_error(name, e))
    }

    /// Answers the requests sprite `name`'s guest makes of the host, until its
    /// agent connection ends. Started once per machine.
    pub(crate) fn serve_guest_requests(self: &Arc<Self>, name: &str, awake: &Awake) {
        if !awake.claim_guest_requests() {
            return;
        }
        let (sprites, name, agent) = (self.clone(), name.to_string(), awake.agent().clone());
        tokio::spawn(async move {
            let mut requests = match agent.guest_requests().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(sprite = %name, error = %e, "the agent takes no guest requests");
                    return;
                }
            };
            while let Ok((id, request)) = requests.next().await {
                let (sprites, name, replier) = (sprites.clone(), name.clone(), requests.replier());
                // Each in a task of its own: a checkpoint takes the sprite's turn.
                tokio::spawn(async move {
                    let answer = match sprites.guest_answers.get(&name, id) {
                        Some(answer) => answer,
                        None => {
                            let answer = sprites.guest_request(&name, request).await;
                            sprites.guest_answers.put(&name, id, &answer);
                            answer
                        }
                    };
                    if let Err(e) = replier.reply(id, answer).await {
                        tracing::debug!(sprite = %name, error = %e, "cannot answer a guest request");
                    }
                });
            }
        });
    }

    async fn guest_request(&self, name: &str, request: GuestRequest) -> Result<String, String> {
        tracing::info!(sprite = %name, ?request, "request from inside the sprite");
        let answer = match request {
            GuestRequest::Checkpoint { comment } => self
                .checkpoint(name, comment)
                .await
                .map(|c| serde_json::json!(CheckpointView::from(c))),
            GuestRequest::ListCheckpoints => self.checkpoints(name).await.map(|list| {
                serde_json::json!(list
                    .into_iter()
                    .map(CheckpointView::from)
                    .collect::<Vec<_>>())
            }),
        };
        answer.map(|v| v.to_string()).map_err(|e| e.chain())
    }
}

/// The latest answers to each sprite's guest requests, by request id. The agent
/// sends a request again on the next connection when the one it went out on ended
/// before the answer came back (a warm sleep or a daemon restart in between), and
/// the answer may have been lost on the way rather than never given: a request
/// with an id answered before gets that answer again instead of being done twice
/// (two checkpoints for one `sprite-env checkpoints create`). Kept in memory: a
/// request repeated to a new daemon is done again.
#[derive(Default)]
pub(crate) struct GuestAnswers {
    by_sprite: std::sync::Mutex<HashMap<String, VecDeque<(u64, GuestAnswer)>>>,
}

/// A guest request's answer: its JSON text, or why it failed.
type GuestAnswer = Result<String, String>;

/// Answers kept per sprite (the guest's requests wait one at a time per caller).
const ANSWERS_KEPT: usize = 64;

impl GuestAnswers {
    fn get(&self, sprite: &str, id: u64) -> Option<GuestAnswer> {
        let all = self.by_sprite.lock().unwrap_or_else(|e| e.into_inner());
        all.get(sprite)?
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, a)| a.clone())
    }

    fn put(&self, sprite: &str, id: u64, answer: &GuestAnswer) {
        let mut all = self.by_sprite.lock().unwrap_or_else(|e| e.into_inner());
        let kept = all.entry(sprite.to_string()).or_default();
        if kept.len() >= ANSWERS_KEPT {
            kept.pop_front();
        }
        kept.push_back((id, answer.clone()));
    }

    /// Forgets sprite `sprite` (deleted).
    pub(crate) fn forget(&self, sprite: &str) {
        self.by_sprite
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sprite);
    }
}
