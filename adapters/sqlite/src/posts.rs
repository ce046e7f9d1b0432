//! The post writer: webhook posts' queue messages made durable in groups (one fsync for
//! every post that arrived during the last commit) before each post is answered.

use crate::schema::PRAGMAS;
use crate::{LocalDb, OpenError, now_unix_ms};
use leadpipe_core::event::LeadEvent;
use leadpipe_core::ports::{Cause, EventQueue, QueueError};
use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::Arc;

/// One post's queue messages, and where to say whether they are durable.
type PostRequest = (
    Vec<String>,
    tokio::sync::oneshot::Sender<Result<(), Arc<rusqlite::Error>>>,
);

/// Group commit for webhook posts: one thread with its own connection takes every post
/// that arrived while it was committing the last group, writes them in one transaction
/// (one fsync for all), and only then answers each. A post is still answered only once it
/// is durable, and posts never queue behind ingest's reads and writes on the other
/// connection, nor stall the async runtime.
#[derive(Debug, Clone)]
pub(crate) struct PostWriter {
    sender: std::sync::mpsc::Sender<PostRequest>,
}

/// Posts committed together at most.
const MAX_GROUP: usize = 512;

impl PostWriter {
    pub(crate) fn start(path: &Path) -> Result<Self, OpenError> {
        let mut conn = Connection::open(path)?;
        conn.execute_batch(PRAGMAS)?;
        let (sender, receiver) = std::sync::mpsc::channel::<PostRequest>();
        std::thread::Builder::new()
            .name("leadpipe-post-writer".into())
            .spawn(move || {
                // Ends when every LocalDb handle (and so every sender) is gone.
                while let Ok(first) = receiver.recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match receiver.try_recv() {
                            Ok(next) => group.push(next),
                            Err(_) => break,
                        }
                    }
                    let result = write_group(&mut conn, &group).map_err(Arc::new);
                    for (_, answer) in group {
                        let _ = answer.send(result.clone());
                    }
                }
            })?;
        Ok(Self { sender })
    }
}

fn write_group(conn: &mut Connection, group: &[PostRequest]) -> rusqlite::Result<()> {
    let now = now_unix_ms();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO queue (body, visible_at, enqueued_at) VALUES (?1, ?2, ?2)",
        )?;
        for (bodies, _) in group {
            for body in bodies {
                insert.execute(params![body, now])?;
            }
        }
    }
    // An empty request is a health probe: a row written and removed in the group's own
    // transaction proves the path posts take is writable, at the cost of no extra fsync.
    if group.iter().any(|(bodies, _)| bodies.is_empty()) {
        tx.execute("INSERT INTO write_probe (at) VALUES (?1)", params![now])?;
        tx.execute("DELETE FROM write_probe", [])?;
    }
    tx.commit()
}

impl LocalDb {
    /// Whether posts can be made durable right now: a probe through the post writer, committed
    /// with whatever group of posts it joins (`serve`'s start and `/health`). A read-only
    /// file, directory or mount fails here (SQLite opens such a file read-only without a
    /// word), not at the first post. `Err` says why not.
    pub async fn probe_posts(&self) -> Result<(), String> {
        let writer = self
            .posts
            .as_ref()
            .ok_or_else(|| "the database was opened read-only".to_owned())?;
        let (answer, durable) = tokio::sync::oneshot::channel();
        writer
            .sender
            .send((Vec::new(), answer))
            .map_err(|_| "the post writer has stopped".to_owned())?;
        durable
            .await
            .map_err(|_| "the post writer has stopped".to_owned())?
            .map_err(|e| e.to_string())
    }
}

impl EventQueue for LocalDb {
    async fn enqueue(&self, events: &[LeadEvent]) -> Result<(), QueueError> {
        let bodies: Vec<String> = events
            .iter()
            .map(LeadEvent::to_message_body)
            .collect::<Result<_, _>>()
            .map_err(|e| QueueError::Rejected {
                failed: events.len(),
                total: events.len(),
                reason: e.to_string(),
            })?;
        // One transaction (shared with the posts that arrived meanwhile): the post's events
        // are all durable, or none are, before the answer.
        let writer = self
            .posts
            .as_ref()
            .ok_or_else(|| QueueError::Unavailable("the database was opened read-only".into()))?;
        let (answer, durable) = tokio::sync::oneshot::channel();
        writer
            .sender
            .send((bodies, answer))
            .map_err(|_| QueueError::Unavailable("the post writer has stopped".into()))?;
        durable
            .await
            .map_err(|_| QueueError::Unavailable("the post writer has stopped".into()))?
            .map_err(|e| QueueError::Unavailable(Cause::from_error(e)))
    }
}
