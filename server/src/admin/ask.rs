//! How admin handlers reach the engine without blocking the runtime: commands go through the
//! same shard inboxes as POS requests (`Engine::submit`) and come back on a oneshot channel;
//! the engine's few blocking calls (definitions, snapshots, figures summed over shards) run on
//! the blocking pool.

use std::sync::{Arc, Mutex};

use ledger_engine::{Command, Engine, ReplySink, Response};
use tokio::sync::oneshot;

use super::error::ApiError;

/// Answers by the tag they were submitted with.
type Replies = Vec<(u64, Response)>;

/// Delivers the answers of one submission to a waiting handler.
struct OneShot {
    sender: Mutex<Option<oneshot::Sender<Replies>>>,
    expected: usize,
    received: Mutex<Replies>,
}

impl ReplySink for OneShot {
    fn deliver(&self, replies: Vec<(u64, Response)>) {
        let mut received = self.received.lock().expect("replies lock");
        received.extend(replies);
        if received.len() >= self.expected
            && let Some(sender) = self.sender.lock().expect("sender lock").take()
        {
            let _ = sender.send(std::mem::take(&mut *received));
        }
    }
}

/// Submits `commands` and waits for every answer, in the order of `commands`.
pub async fn ask_all(engine: &Engine, commands: Vec<Command>) -> Result<Vec<Response>, ApiError> {
    if commands.is_empty() {
        return Ok(Vec::new());
    }
    let (sender, receiver) = oneshot::channel();
    let sink = Arc::new(OneShot {
        sender: Mutex::new(Some(sender)),
        expected: commands.len(),
        received: Mutex::new(Vec::with_capacity(commands.len())),
    });
    let dyn_sink: Arc<dyn ReplySink> = sink;
    let count = commands.len();
    engine
        .submit(&dyn_sink, commands.into_iter().enumerate().map(|(i, c)| (i as u64, c)).collect());
    let mut replies =
        receiver.await.map_err(|_| ApiError::internal("the engine dropped a request"))?;
    if replies.len() != count {
        return Err(ApiError::internal("the engine answered a request twice"));
    }
    replies.sort_unstable_by_key(|(tag, _)| *tag);
    Ok(replies.into_iter().map(|(_, response)| response).collect())
}

/// Submits one command and waits for its answer.
pub async fn ask(engine: &Engine, command: Command) -> Result<Response, ApiError> {
    let mut responses = ask_all(engine, vec![command]).await?;
    responses.pop().ok_or_else(|| ApiError::internal("no answer"))
}

/// Runs one of the engine's blocking calls on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    engine: &Arc<Engine>,
    call: impl FnOnce(&Engine) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let engine = Arc::clone(engine);
    tokio::task::spawn_blocking(move || call(&engine))
        .await
        .map_err(|error| ApiError::internal(format!("a blocking engine call failed: {error}")))
}
