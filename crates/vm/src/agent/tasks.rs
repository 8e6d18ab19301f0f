//! The agent client's keep-awake tasks and the guest's requests to the host.

use wisp_proto::{Control, GuestRequest, TaskInfo};

use super::{unexpected, AgentClient, AgentError};

/// The open `guest_requests` session: what programs in the guest ask the host
/// for (through the agent's in-sprite API). Dropping it closes the session.
pub struct GuestRequests {
    session: super::Session,
}

/// Answers one guest request (cheap to clone; usable from another task).
#[derive(Clone)]
pub struct GuestReplier {
    inner: std::sync::Arc<super::Inner>,
    id: u32,
}

impl GuestRequests {
    /// The next request: its id (for [`GuestReplier::reply`]) and what it asks.
    pub async fn next(&mut self) -> Result<(u64, GuestRequest), AgentError> {
        match self.session.next_control().await? {
            Control::GuestRequest { id, request } => Ok((id, request)),
            other => Err(unexpected(&other)),
        }
    }

    pub fn replier(&self) -> GuestReplier {
        GuestReplier {
            inner: self.session.inner.clone(),
            id: self.session.id,
        }
    }
}

impl GuestReplier {
    /// Answers request `id`: its JSON text, or why it failed.
    pub async fn reply(&self, id: u64, answer: Result<String, String>) -> Result<(), AgentError> {
        let (result, error) = match answer {
            Ok(json) => (Some(json), None),
            Err(e) => (None, Some(e)),
        };
        self.inner
            .send_control(self.id, &Control::GuestReply { id, result, error })
            .await
    }
}

impl AgentClient {
    /// The live keep-awake tasks in the guest.
    pub async fn tasks(&self) -> Result<Vec<TaskInfo>, AgentError> {
        match self.request(&Control::TaskList).await? {
            Control::Tasks { tasks } => Ok(tasks),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates or refreshes keep-awake task `name` for `ttl_secs` seconds of the
    /// guest's running time; the live tasks after it.
    pub async fn set_task(
        &self,
        name: &str,
        ttl_secs: u64,
        description: Option<String>,
    ) -> Result<Vec<TaskInfo>, AgentError> {
        let msg = Control::TaskSet {
            name: name.to_string(),
            ttl_secs,
            description,
        };
        match self.request(&msg).await? {
            Control::Tasks { tasks } => Ok(tasks),
            other => Err(unexpected(&other)),
        }
    }

    /// Ends keep-awake task `name` ([`AgentError::Os`] `ENOENT` when there is none).
    pub async fn delete_task(&self, name: &str) -> Result<Vec<TaskInfo>, AgentError> {
        let msg = Control::TaskDelete {
            name: name.to_string(),
        };
        match self.request(&msg).await? {
            Control::Tasks { tasks } => Ok(tasks),
            other => Err(unexpected(&other)),
        }
    }

    /// Opens the session the guest's requests to the host arrive on.
    pub async fn guest_requests(&self) -> Result<GuestRequests, AgentError> {
        let mut session = self.open();
        self.inner
            .send_control(session.id, &Control::GuestRequests)
            .await?;
        match session.next_control().await? {
            Control::Ok => Ok(GuestRequests { session }),
            other => Err(unexpected(&other)),
        }
    }
}
