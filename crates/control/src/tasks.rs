//! Keep-awake tasks.

use crate::machines::Awake;

/// Whether a live keep-awake task holds sprite `awake` up.
pub(crate) async fn held_awake(_awake: &Awake) -> bool {
    false
}
