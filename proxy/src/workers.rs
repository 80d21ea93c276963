//! The threads that serve clients. Each runs a single-threaded runtime and has its own lanes
//! of the backend pool, so a session and the node connections it uses live on one thread: a
//! request crosses no thread on its way, and the requests of every session that ran in one
//! turn of the thread's loop reach a node in one write. That batching is what lets the proxy
//! cost the nodes less per request than direct unpipelined clients do.
//!
//! The control thread accepts and deals the connections out in turn.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use lagwise_shared::shutdown::Shutdown;

use crate::route::Proxy;
use crate::session;

pub struct Workers {
    clients: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    next: usize,
    done: Vec<oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts `threads` client threads. On shutdown each finishes its sessions' requests
    /// within `grace`, then closes what is left.
    pub fn start(
        threads: usize,
        proxy: &Arc<Proxy>,
        shutdown: &Shutdown,
        grace: Duration,
    ) -> std::io::Result<Workers> {
        let mut workers = Workers {
            clients: Vec::new(),
            next: 0,
            done: Vec::new(),
        };
        for index in 0..threads {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let (done_tx, done_rx) = oneshot::channel();
            let (proxy, shutdown) = (proxy.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name(format!("lagwise-client-{index}"))
                .spawn(move || {
                    runtime.block_on(serve_clients(index, rx, proxy, shutdown, grace));
                    // Dropping the runtime stops this thread's backend connections.
                    drop(runtime);
                    let _ = done_tx.send(());
                })?;
            workers.clients.push(tx);
            workers.done.push(done_rx);
        }
        Ok(workers)
    }

    /// Hands an accepted client (already counted in `session::CONNECTED`) to the next thread.
    pub fn hand(&mut self, stream: tokio::net::TcpStream) {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot hand a client to a thread");
                session::CONNECTED.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        };
        let i = self.next % self.clients.len();
        self.next = self.next.wrapping_add(1);
        if self.clients[i].send(stream).is_err() {
            // The thread is gone (it only stops at shutdown): the client is closed.
            session::CONNECTED.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Stops handing out clients and waits for every thread to finish its sessions, at most
    /// `limit`.
    pub async fn finish(self, limit: Duration) {
        drop(self.clients);
        let all = futures::future::join_all(self.done);
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!("client threads did not stop in time");
        }
    }
}

async fn serve_clients(
    index: usize,
    mut clients: mpsc::UnboundedReceiver<std::net::TcpStream>,
    proxy: Arc<Proxy>,
    shutdown: Shutdown,
    grace: Duration,
) {
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            client = clients.recv() => match client {
                Some(std) => match tokio::net::TcpStream::from_std(std) {
                    Ok(stream) => {
                        sessions.spawn(session::serve(proxy.clone(), stream, shutdown.clone(), index));
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot serve a client");
                        session::CONNECTED.fetch_sub(1, Ordering::Relaxed);
                    }
                },
                None => break,
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    let drain = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        warn!(
            thread = index,
            "shutdown grace period over, closing remaining clients"
        );
    }
}
