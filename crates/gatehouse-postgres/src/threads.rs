//! Session threads: each client connection lives, from accept to close, on one thread that
//! runs a single-threaded runtime of its own, one such thread per core by default.
//!
//! A session is a chain of short steps (read from the client, decide, write to the server,
//! read the answer, write to the client), each waking the next. On the shared work-stealing
//! runtime those wake-ups cross threads: the task woken by the server's answer may be picked
//! up by the other worker, which must be woken for it, and idle workers are woken to look for
//! work they then do not find. Pinning each session to one thread keeps a statement's round
//! trip on that thread, as PgBouncer's single thread and PostgreSQL's process per connection
//! do, and still uses every core by spreading sessions over the threads (a new session goes to
//! the thread with the fewest). Measured against the shared runtime (docs/BENCHMARKS.md,
//! "Session threads"): 10-15% more throughput at 8 clients and a fifth less CPU per statement
//! at one client, where statements do not wait for the disk (batched audit); strict audit's
//! statements wait for the disk either way and did not change. What is given up is stealing:
//! a thread whose sessions are all busy cannot hand work to an idle one. With few sessions
//! that run in bursts (TPC-B's write transactions at 8 clients, waiting on row locks) that
//! measured 0-10% slower; `session_threads = 0` is the choice there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::PgContext;

/// The session threads; sessions are placed with [`SessionThreads::place`]. Dropping this
/// stops the threads once they have taken what was placed on them, ending their sessions.
pub struct SessionThreads {
    threads: Vec<SessionThread>,
}

struct SessionThread {
    queue: mpsc::UnboundedSender<Placed>,
    /// Sessions placed on this thread and not ended yet.
    sessions: Arc<AtomicUsize>,
}

/// A connection handed to a session thread.
struct Placed {
    tcp: std::net::TcpStream,
    addr: SocketAddr,
    ctx: Arc<PgContext>,
    /// Counts the session against its thread until it ends.
    counted: Counted,
}

/// Why the session threads could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the session threads: {0}")]
pub struct StartError(#[from] std::io::Error);

impl SessionThreads {
    /// Starts `count` threads (at least one), each running a single-threaded runtime.
    pub fn start(count: usize) -> Result<SessionThreads, StartError> {
        let mut threads = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (queue, placed) = mpsc::unbounded_channel();
            std::thread::Builder::new()
                .name(format!("gatehouse-sessions-{i}"))
                .spawn(move || runtime.block_on(run_sessions(placed)))?;
            threads.push(SessionThread {
                queue,
                sessions: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(SessionThreads { threads })
    }

    /// Runs the session of a newly accepted connection on the thread with the fewest sessions.
    pub fn place(&self, tcp: TcpStream, addr: SocketAddr, ctx: Arc<PgContext>) {
        let Some(thread) = self
            .threads
            .iter()
            .min_by_key(|t| t.sessions.load(Ordering::Relaxed))
        else {
            return;
        };
        // The socket is registered with the accepting runtime's I/O driver; it is taken off
        // it here and registered with the session thread's there.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(client = %addr, error = %e, "cannot hand a connection to a session thread; closed it");
                return;
            }
        };
        let placed = Placed {
            tcp,
            addr,
            ctx,
            counted: Counted::new(&thread.sessions),
        };
        if thread.queue.send(placed).is_err() {
            // Only when the thread's runtime failed; the connection is closed with `placed`.
            tracing::error!(client = %addr, "a session thread has stopped; closed the connection");
        }
    }
}

/// A session thread's loop: starts each connection placed on it as a task of its runtime.
async fn run_sessions(mut placed: mpsc::UnboundedReceiver<Placed>) {
    while let Some(Placed {
        tcp,
        addr,
        ctx,
        counted,
    }) = placed.recv().await
    {
        match TcpStream::from_std(tcp) {
            Ok(tcp) => {
                tokio::spawn(async move {
                    crate::session::handle(tcp, addr, ctx).await;
                    drop(counted);
                });
            }
            Err(e) => {
                tracing::warn!(client = %addr, error = %e, "a session thread cannot take a connection; closed it");
            }
        }
    }
}

/// One session counted against its thread, from placement until dropped.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(sessions: &Arc<AtomicUsize>) -> Counted {
        sessions.fetch_add(1, Ordering::Relaxed);
        Counted(sessions.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
