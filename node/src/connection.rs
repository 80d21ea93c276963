//! One client connection: read what has arrived, run every complete request under one
//! acquisition of the keyspace lock, write all the replies, repeat.
//!
//! Batching is what makes pipelining cheap: a client that sends 16 commands in one write
//! takes the lock once, not 16 times. The lock is a plain mutex held only while commands run,
//! never across an `.await`.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;
use tracing::debug;

use lagwise_shared::codec::{DecodeError, Request, RequestDecoder};
use lagwise_shared::resp::{Protocol, ReplyWriter};

use crate::clients::ClientHandle;
use crate::cmd::{self, Ctx, Outcome};
use crate::server::{now_ms, Server, Stats};

/// Most commands run in one hold of the lock, so one deep pipeline cannot starve others.
const MAX_BATCH: usize = 1024;
/// Replies are flushed once this much is buffered, even mid-batch.
const FLUSH_AT: usize = 64 * 1024;

/// Per-connection state that commands read and change.
#[derive(Debug)]
pub struct ClientState {
    pub id: u64,
    pub protocol: Protocol,
    pub authenticated: bool,
    pub handle: Arc<ClientHandle>,
}

/// Tells a client it cannot be served, then closes.
pub async fn refuse(mut stream: TcpStream, message: &str) {
    let reply = format!("-{message}\r\n");
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
}

/// Serves one client until it leaves, is killed, or the server shuts down. The client was
/// registered at accept, so ids follow the order of connection.
pub async fn serve(server: Arc<Server>, mut stream: TcpStream, handle: Arc<ClientHandle>) {
    let (requirepass, max_bulk) = {
        let config = server.config.read();
        (
            !config.get("requirepass").is_empty(),
            config.get_u64("proto-max-bulk-len"),
        )
    };
    let mut client = ClientState {
        id: handle.id,
        protocol: Protocol::Resp2,
        authenticated: !requirepass,
        handle: handle.clone(),
    };
    let mut decoder = RequestDecoder::new(max_bulk);
    decoder.set_authenticated(client.authenticated);
    let mut shutdown = server.shutdown_listener();
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(16 * 1024);
    let mut requests: Vec<Request> = Vec::with_capacity(16);

    'conn: loop {
        let idle_timeout = server.config.read().get_u64("timeout");
        let idle = async {
            if idle_timeout == 0 {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(Duration::from_secs(idle_timeout)).await
            }
        };
        let read = tokio::select! {
            r = stream.read_buf(&mut input) => r,
            _ = handle.killed() => break,
            _ = shutdown.wait() => break,
            _ = idle => {
                debug!(client = client.id, "closing idle client");
                break;
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => Stats::add(&server.stats.net_input_bytes, n as u64),
        }

        // Frame everything that has arrived.
        let mut protocol_error = None;
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(req)) => requests.push(req),
                Ok(None) => break,
                Err(DecodeError::Protocol(e)) => {
                    protocol_error = Some(e);
                    break;
                }
                Err(DecodeError::Io(_)) => break 'conn,
            }
        }
        handle.info.lock().qbuf = input.len();

        let mut close = false;
        let mut next = 0;
        let mut last_cmd = "";
        while next < requests.len() && !close {
            // CLIENT PAUSE: wait outside the lock until this command may run.
            if let Some(until) = server
                .pause
                .blocks(|| cmd::is_write_request(&requests[next]))
            {
                if !output.is_empty() && write_out(&server, &mut stream, &mut output).await.is_err()
                {
                    break 'conn;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = server.pause.ended.notified() => {}
                    _ = handle.killed() => break 'conn,
                }
                continue;
            }
            let mut freeze = None;
            {
                let mut db = server.db.lock();
                let now = now_ms();
                let end = (next + MAX_BATCH).min(requests.len());
                let mut out = ReplyWriter::new(&mut output, client.protocol);
                while next < end {
                    if server
                        .pause
                        .blocks(|| cmd::is_write_request(&requests[next]))
                        .is_some()
                    {
                        break;
                    }
                    let mut ctx = Ctx {
                        server: &server,
                        db: &mut db,
                        client: &mut client,
                        out: &mut out,
                        now_ms: now,
                        outcome: Outcome::Continue,
                    };
                    if let Some(name) = cmd::execute(&mut ctx, &requests[next]) {
                        last_cmd = name;
                    }
                    let outcome = ctx.outcome;
                    next += 1;
                    match outcome {
                        Outcome::Continue => {}
                        Outcome::Close => {
                            close = true;
                            break;
                        }
                        Outcome::Freeze(d) => {
                            freeze = Some(d);
                            break;
                        }
                    }
                    if out.out.len() >= FLUSH_AT {
                        break;
                    }
                }
                decoder.set_authenticated(client.authenticated);
                if let Some(d) = freeze {
                    // DEBUG SLEEP stops the whole server, as in Valkey: hold the lock.
                    tokio::task::block_in_place(|| std::thread::sleep(d));
                }
            }
            if output.len() >= FLUSH_AT
                && write_out(&server, &mut stream, &mut output).await.is_err()
            {
                break 'conn;
            }
        }
        Stats::add(&server.stats.commands_processed, next as u64);
        requests.clear();
        handle.touch();
        if !last_cmd.is_empty() {
            handle.info.lock().last_cmd = last_cmd;
        }

        if let Some(e) = &protocol_error {
            ReplyWriter::new(&mut output, client.protocol)
                .error(format!("ERR Protocol error: {}", e.0));
            close = true;
        }
        if !output.is_empty() && write_out(&server, &mut stream, &mut output).await.is_err() {
            break;
        }
        if close {
            break;
        }
    }
    // Gone from CLIENT LIST before the peer can see the close.
    server.clients.unregister(client.id);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

async fn write_out(
    server: &Server,
    stream: &mut TcpStream,
    output: &mut BytesMut,
) -> std::io::Result<()> {
    let n = output.len();
    // A client that stops reading must not hold its task forever.
    match tokio::time::timeout(Duration::from_secs(60), stream.write_all(output)).await {
        Ok(r) => r?,
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
    }
    output.clear();
    Stats::add(&server.stats.net_output_bytes, n as u64);
    Ok(())
}
