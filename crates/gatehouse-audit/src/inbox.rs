//! The hand-off between the gateway's tasks and the log's writer: a queue that wakes the
//! writer thread only for what cannot wait, and lets a caller write the queue itself.
//!
//! A channel wakes its receiver for every message. Most records need no such wake: nobody
//! waits for an outcome record (strict durability) or for any record (batched), and the
//! writer picks them up within a few milliseconds anyway, when it next writes or on its own
//! timer. Each avoided wake is a futex call on the sender's side and a context switch on the
//! writer's, per record, on the same cores that run the sessions. Only a writer thread with
//! nothing to do at all (see [`Inbox::wait`]) is woken by every message, so nothing is left
//! queued for longer than its timer.
//!
//! A record someone waits for does not wake the writer thread either: its caller *leads*
//! ([`Inbox::lead`]): when no write is in progress it takes everything queued and writes it
//! on its own thread, then answers every waiter of the batch. Callers arriving while a write is
//! in progress wait for theirs; whoever ends the write leaves what came meanwhile to the writer
//! thread, waking it ([`Inbox::release`]). So one client's statement costs no thread hand-off
//! at all, and many clients still share each durable write (group commit).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::Duration;

/// The queue itself, shared by the writer thread, every [`Sender`] and every leader.
pub(crate) struct Inbox<T> {
    state: Mutex<State<T>>,
    /// Set by the writer thread while it sleeps with nothing to do: every message then wakes
    /// it.
    idle: AtomicBool,
    /// The writer thread, once started.
    writer: OnceLock<Thread>,
}

struct State<T> {
    messages: Vec<T>,
    /// How many of `messages` someone waits for (sent with [`Wake::Lead`]).
    waited: usize,
    /// Someone holds the lead: a write is in progress, and nobody else may write.
    leading: bool,
    /// The last write that carried records someone waited for carried more than one: callers
    /// come together, and leave their writes to the writer thread.
    together: bool,
    /// A clean stop was asked for: the writer thread writes what is queued and stops.
    closing: bool,
    /// The writer has stopped: sends are refused (and what they carry dropped, so a caller
    /// waiting on it learns at once).
    closed: bool,
    /// Every sender is gone.
    hung_up: bool,
}

/// Whether a message must wake the writer thread now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Nobody waits: the message goes with the next write, or on the writer's timer.
    Later,
    /// Its sender waits for it and will lead the write itself ([`Inbox::lead`]); it wakes
    /// nobody.
    Lead,
}

/// Who asks for the lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leader {
    /// The writer thread.
    Writer,
    /// A caller waiting for its record, on its own thread.
    Caller,
}

/// What [`Inbox::lead`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lead {
    /// The caller holds the lead and the queued messages were moved to it; it must call
    /// [`Inbox::release`] when its write is done.
    Granted {
        /// A clean stop was asked for.
        closing: bool,
        /// Nothing was queued and every sender is gone: the writer may stop.
        hung_up: bool,
    },
    /// Someone else is writing, or the writer stopped, or (to a caller) callers come
    /// together and the writer thread writes for them (it was woken); nothing was taken.
    Busy,
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
}

/// The writer has stopped; the message was not queued.
#[derive(Debug)]
pub(crate) struct Closed;

impl<T> Inbox<T> {
    pub(crate) fn new() -> Arc<Inbox<T>> {
        Arc::new(Inbox {
            state: Mutex::new(State {
                messages: Vec::new(),
                waited: 0,
                leading: false,
                together: false,
                closing: false,
                closed: false,
                hung_up: false,
            }),
            idle: AtomicBool::new(false),
            writer: OnceLock::new(),
        })
    }

    /// Names the writer thread (the one that calls [`Inbox::wait`]), which the inbox wakes.
    pub(crate) fn set_writer(&self, writer: Thread) {
        let _ = self.writer.set(writer);
    }

    /// The sending side.
    pub(crate) fn sender(self: &Arc<Self>) -> Sender<T> {
        Sender {
            shared: Arc::new(SenderShared {
                inbox: self.clone(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The lock only guards flags and pushes and swaps of a `Vec`, which leave it whole
        // even if a thread panicked while holding it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the writer thread.
    pub(crate) fn wake_writer(&self) {
        if let Some(writer) = self.writer.get() {
            writer.unpark();
        }
    }

    /// Takes the lead if no write is in progress, moving every queued message into `into`
    /// (which should be empty; its allocation is reused for the next messages).
    ///
    /// A caller gets it only while callers come one at a time (the last write carried one
    /// record someone waited for): a caller's write blocks its thread, which runs other
    /// sessions, so when several wait the writer thread serves them all with one write while
    /// the callers' threads go on. Such a caller is refused and the writer thread woken.
    pub(crate) fn lead(&self, into: &mut Vec<T>, by: Leader) -> Lead {
        let mut state = self.lock();
        if state.leading || state.closed {
            return Lead::Busy;
        }
        if by == Leader::Caller && state.together {
            drop(state);
            self.wake_writer();
            return Lead::Busy;
        }
        state.leading = true;
        if state.waited > 0 {
            state.together = state.waited > 1;
        }
        state.waited = 0;
        let hung_up = state.messages.is_empty() && state.hung_up;
        std::mem::swap(&mut state.messages, into);
        Lead::Granted {
            closing: state.closing,
            hung_up,
        }
    }

    /// Gives the lead up after a write. Returns whether messages someone waits for came
    /// meanwhile; when they did (or anything came for an idle writer, or a stop was asked
    /// for), the writer thread is woken to write them, unless `by_writer` (the writer thread
    /// itself releases, and looks again anyway). `emptied`, the leader's batch once written,
    /// becomes the queue again if nothing came meanwhile, so that no lead costs an allocation.
    pub(crate) fn release(&self, by_writer: bool, emptied: &mut Vec<T>) -> bool {
        let (waited, wake) = {
            let mut state = self.lock();
            state.leading = false;
            if state.messages.capacity() == 0 && emptied.is_empty() {
                std::mem::swap(&mut state.messages, emptied);
            }
            let waited = state.waited > 0;
            let wake = waited
                || state.closing
                || (!state.messages.is_empty() && self.idle.load(Ordering::SeqCst));
            (waited, wake)
        };
        if wake && !by_writer {
            self.wake_writer();
        }
        waited
    }

    /// Sleeps the writer thread until a message that must wake it comes, or `timeout`. With
    /// `idle` (the writer has nothing to do and nothing of its own due before `timeout`), any
    /// message wakes it. May return early, as a spurious wake-up can; callers loop.
    pub(crate) fn wait(&self, timeout: Duration, idle: bool) {
        if idle {
            // Published before looking at the queue: a sender that pushes after the look sees
            // the flag and wakes the writer, one that pushed before is found by the look.
            self.idle.store(true, Ordering::SeqCst);
            let waiting = {
                let state = self.lock();
                !state.messages.is_empty() || state.hung_up || state.closing
            };
            if !waiting {
                std::thread::park_timeout(timeout);
            }
            self.idle.store(false, Ordering::SeqCst);
        } else {
            std::thread::park_timeout(timeout);
        }
    }

    /// Asks the writer thread to write what is queued and stop. Fails when it has stopped.
    pub(crate) fn ask_to_close(&self) -> Result<(), Closed> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err(Closed);
            }
            state.closing = true;
        }
        self.wake_writer();
        Ok(())
    }

    /// Refuses every later send and lead and drops what is queued, so its waiters learn the
    /// writer stopped rather than waiting forever.
    pub(crate) fn close(&self) {
        let dropped = {
            let mut state = self.lock();
            state.closed = true;
            state.waited = 0;
            std::mem::take(&mut state.messages)
        };
        drop(dropped);
    }
}

impl<T> Sender<T> {
    /// Queues `message`, waking the writer thread as `wake` says (and always when it is idle,
    /// unless the sender leads the write itself).
    pub(crate) fn send(&self, message: T, wake: Wake) -> Result<(), Closed> {
        let inbox = &self.shared.inbox;
        {
            let mut state = inbox.lock();
            if state.closed {
                return Err(Closed);
            }
            state.messages.push(message);
            if wake == Wake::Lead {
                state.waited += 1;
            }
        }
        if wake == Wake::Later && inbox.idle.load(Ordering::SeqCst) {
            inbox.wake_writer();
        }
        Ok(())
    }
}

impl<T> Drop for SenderShared<T> {
    fn drop(&mut self) {
        self.inbox.lock().hung_up = true;
        self.inbox.wake_writer();
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
                if let Lead::Granted { hung_up, .. } = writer_inbox.lead(&mut taken, Leader::Writer)
                {
                    writer_inbox.release(true, &mut Vec::new());
                    if hung_up {
                        let _ = report.send(None);
                        return;
                    }
                }
                if !taken.is_empty() {
                    let _ = report.send(Some(taken));
                }
                writer_inbox.wait(Duration::from_secs(30), idle);
            }
        });
        inbox.set_writer(handle.thread().clone());
        (inbox.sender(), reports)
    }

    #[test]
    fn an_idle_writer_is_woken_by_any_message_but_one_its_sender_leads() {
        let (sender, reports) = writer(true);
        // Once the writer sleeps (its first look at the queue would take anything).
        while !sender.shared.inbox.idle.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        sender.send(6, Wake::Lead).unwrap();
        assert!(
            reports.recv_timeout(Duration::from_millis(200)).is_err(),
            "a message whose sender writes it itself woke the writer"
        );
        sender.send(7, Wake::Later).unwrap();
        let taken = reports.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(taken, Some(vec![6, 7]));
    }

    #[test]
    fn one_leader_at_a_time_and_what_came_meanwhile_goes_to_the_writer() {
        let inbox = Inbox::new();
        inbox.set_writer(std::thread::current());
        let sender = inbox.sender();
        sender.send(1, Wake::Lead).unwrap();
        let mut first = Vec::new();
        assert_eq!(
            inbox.lead(&mut first, Leader::Caller),
            Lead::Granted {
                closing: false,
                hung_up: false
            }
        );
        assert_eq!(first, [1]);
        first.clear();
        sender.send(2, Wake::Lead).unwrap();
        let mut second = Vec::new();
        assert_eq!(
            inbox.lead(&mut second, Leader::Caller),
            Lead::Busy,
            "a write is in progress"
        );
        assert!(second.is_empty());
        // The leader's release wakes the writer (this thread) for the message that came.
        assert!(inbox.release(false, &mut first));
        let started = Instant::now();
        std::thread::park_timeout(Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(10), "not woken");
        assert!(matches!(
            inbox.lead(&mut second, Leader::Caller),
            Lead::Granted { .. }
        ));
        assert_eq!(second, [2]);
        second.clear();
        assert!(!inbox.release(false, &mut second), "nothing came meanwhile");
        // The written batch's allocation became the queue's.
        assert_eq!(second.capacity(), 0);
        assert!(inbox.lock().messages.capacity() > 0);
    }

    #[test]
    fn callers_that_come_together_leave_the_write_to_the_writer_thread() {
        let inbox = Inbox::new();
        inbox.set_writer(std::thread::current());
        let sender = inbox.sender();
        sender.send(1, Wake::Lead).unwrap();
        sender.send(2, Wake::Lead).unwrap();
        let mut taken = Vec::new();
        assert!(matches!(
            inbox.lead(&mut taken, Leader::Writer),
            Lead::Granted { .. }
        ));
        inbox.release(true, &mut taken);
        // The last write carried two waited-for records: a caller is refused, the writer woken.
        sender.send(3, Wake::Lead).unwrap();
        let mut by_caller = Vec::new();
        assert_eq!(inbox.lead(&mut by_caller, Leader::Caller), Lead::Busy);
        let started = Instant::now();
        std::thread::park_timeout(Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(10), "not woken");
        taken.clear();
        assert!(matches!(
            inbox.lead(&mut taken, Leader::Writer),
            Lead::Granted { .. }
        ));
        assert_eq!(taken, [3]);
        inbox.release(true, &mut taken);
        // That one carried one: callers lead again.
        sender.send(4, Wake::Lead).unwrap();
        assert!(matches!(
            inbox.lead(&mut by_caller, Leader::Caller),
            Lead::Granted { .. }
        ));
        assert_eq!(by_caller, [4]);
    }

    #[test]
    fn the_writer_learns_when_every_sender_is_gone() {
        let (sender, reports) = writer(false);
        let second = sender.clone();
        drop(sender);
        second.send(3, Wake::Later).unwrap();
        second.shared.inbox.wake_writer();
        assert_eq!(
            reports.recv_timeout(Duration::from_secs(10)).unwrap(),
            Some(vec![3])
        );
        drop(second);
        assert_eq!(reports.recv_timeout(Duration::from_secs(10)).unwrap(), None);
    }

    #[test]
    fn a_closed_inbox_refuses_sends_and_leads_and_drops_what_was_queued() {
        let inbox = Inbox::new();
        let sender = inbox.sender();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        sender.send(tx, Wake::Later).unwrap();
        assert!(inbox.ask_to_close().is_ok());
        inbox.close();
        assert!(matches!(
            rx.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
        let (tx, _rx) = tokio::sync::oneshot::channel::<()>();
        assert!(sender.send(tx, Wake::Lead).is_err());
        assert_eq!(inbox.lead(&mut Vec::new(), Leader::Caller), Lead::Busy);
        assert!(inbox.ask_to_close().is_err());
    }
}
