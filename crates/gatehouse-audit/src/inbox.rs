//! The hand-off from the gateway's tasks to the log's writer thread: a queue that wakes the
//! writer only for what cannot wait.
//!
//! A channel wakes its receiver for every message. Most records need no such wake: nobody
//! waits for an outcome record (strict durability) or for any record (batched), and the
//! writer picks them up within a few milliseconds anyway, when it next wakes for a record
//! someone waits for or its own timer. Each avoided wake is a futex call on the sender's side
//! and a context switch on the writer's, per record, on the same cores that run the sessions.
//! Only a writer with nothing to do at all (see [`Inbox::wait`]) is woken by every message, so
//! nothing is left queued for longer than its timer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
use std::time::Duration;

/// The queue itself, shared by the writer and every [`Sender`].
pub(crate) struct Inbox<T> {
    state: Mutex<State<T>>,
    /// Set by the writer while it sleeps with nothing to do: every message then wakes it.
    idle: AtomicBool,
}

struct State<T> {
    messages: Vec<T>,
    /// The writer has stopped: sends are refused (and what they carry dropped, so a caller
    /// waiting on it learns at once).
    closed: bool,
    /// Every sender is gone.
    hung_up: bool,
}

/// Whether a message must wake the writer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Someone waits for it: wake the writer at once.
    Now,
    /// Nobody waits: the writer takes it with the next message it wakes for, or on its timer.
    Later,
}

/// What [`Inbox::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Messages were moved out, or none had come.
    Open,
    /// Nothing was queued and every sender is gone: the writer may stop.
    HungUp,
}

/// The sending side; cheap to clone. When the last clone is dropped the writer is told.
pub(crate) struct Sender<T> {
    shared: Arc<SenderShared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            shared: self.shared.clone(),
        }
    }
}

struct SenderShared<T> {
    inbox: Arc<Inbox<T>>,
    writer: Thread,
}

/// The writer has stopped; the message was not queued.
#[derive(Debug)]
pub(crate) struct Closed;

impl<T> Inbox<T> {
    pub(crate) fn new() -> Arc<Inbox<T>> {
        Arc::new(Inbox {
            state: Mutex::new(State {
                messages: Vec::new(),
                closed: false,
                hung_up: false,
            }),
            idle: AtomicBool::new(false),
        })
    }

    /// The sending side, waking `writer` (the thread that calls [`Inbox::take`] and
    /// [`Inbox::wait`]).
    pub(crate) fn sender(self: &Arc<Self>, writer: Thread) -> Sender<T> {
        Sender {
            shared: Arc::new(SenderShared {
                inbox: self.clone(),
                writer,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The lock only guards pushes and swaps of a `Vec`, which leave it whole even if a
        // thread panicked while holding it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves every queued message into `into` (which should be empty; its allocation is
    /// reused for the next messages).
    pub(crate) fn take(&self, into: &mut Vec<T>) -> Taken {
        let mut state = self.lock();
        if state.messages.is_empty() && state.hung_up {
            return Taken::HungUp;
        }
        std::mem::swap(&mut state.messages, into);
        Taken::Open
    }

    /// Sleeps until a message that must wake the writer comes, or `timeout`. With `idle` (the
    /// writer has nothing to do and nothing of its own due before `timeout`), any message
    /// wakes it. May return early, as a spurious wake-up can; callers loop.
    pub(crate) fn wait(&self, timeout: Duration, idle: bool) {
        if idle {
            // Published before looking at the queue: a sender that pushes after the look sees
            // the flag and wakes the writer, one that pushed before is found by the look.
            self.idle.store(true, Ordering::SeqCst);
            let waiting = {
                let state = self.lock();
                !state.messages.is_empty() || state.hung_up
            };
            if !waiting {
                std::thread::park_timeout(timeout);
            }
            self.idle.store(false, Ordering::SeqCst);
        } else {
            std::thread::park_timeout(timeout);
        }
    }

    /// Refuses every later send and drops what is queued, so its waiters learn the writer
    /// stopped rather than waiting forever.
    pub(crate) fn close(&self) {
        let dropped = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.messages)
        };
        drop(dropped);
    }
}

impl<T> Sender<T> {
    /// Queues `message`, waking the writer as `wake` says (and always when it is idle).
    pub(crate) fn send(&self, message: T, wake: Wake) -> Result<(), Closed> {
        let inbox = &self.shared.inbox;
        {
            let mut state = inbox.lock();
            if state.closed {
                return Err(Closed);
            }
            state.messages.push(message);
        }
        if wake == Wake::Now || inbox.idle.load(Ordering::SeqCst) {
            self.shared.writer.unpark();
        }
        Ok(())
    }
}

impl<T> Drop for SenderShared<T> {
    fn drop(&mut self) {
        self.inbox.lock().hung_up = true;
        self.writer.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// A writer thread that waits as told and reports each wake-up with what it took.
    fn writer(idle: bool) -> (Sender<u32>, mpsc::Receiver<Option<Vec<u32>>>) {
        let inbox = Inbox::new();
        let (report, reports) = mpsc::channel();
        let writer_inbox = inbox.clone();
        let handle = std::thread::spawn(move || {
            loop {
                let mut taken = Vec::new();
                if writer_inbox.take(&mut taken) == Taken::HungUp {
                    let _ = report.send(None);
                    return;
                }
                if !taken.is_empty() {
                    let _ = report.send(Some(taken));
                }
                writer_inbox.wait(Duration::from_secs(30), idle);
            }
        });
        (inbox.sender(handle.thread().clone()), reports)
    }

    #[test]
    fn a_message_someone_waits_for_wakes_a_sleeping_writer_at_once() {
        let (sender, reports) = writer(false);
        sender.send(1, Wake::Later).unwrap();
        let started = Instant::now();
        sender.send(2, Wake::Now).unwrap();
        let taken = reports.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(taken, Some(vec![1, 2]), "in order, the unwoken one first");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn an_idle_writer_is_woken_by_any_message() {
        let (sender, reports) = writer(true);
        sender.send(7, Wake::Later).unwrap();
        let taken = reports.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(taken, Some(vec![7]));
    }

    #[test]
    fn the_writer_learns_when_every_sender_is_gone() {
        let (sender, reports) = writer(false);
        let second = sender.clone();
        drop(sender);
        second.send(3, Wake::Now).unwrap();
        assert_eq!(
            reports.recv_timeout(Duration::from_secs(10)).unwrap(),
            Some(vec![3])
        );
        drop(second);
        assert_eq!(reports.recv_timeout(Duration::from_secs(10)).unwrap(), None);
    }

    #[test]
    fn a_closed_inbox_refuses_sends_and_drops_what_was_queued() {
        let inbox = Inbox::new();
        let sender = inbox.sender(std::thread::current());
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        sender.send(tx, Wake::Later).unwrap();
        inbox.close();
        assert!(matches!(
            rx.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
        let (tx, _rx) = tokio::sync::oneshot::channel::<()>();
        assert!(sender.send(tx, Wake::Now).is_err());
    }
}
