//! `--demo`: a local cluster of lagwise-node processes behind the proxy, in one command.
//!
//! Six nodes (three primaries with a replica each) on free loopback ports, formed the way
//! `redis-cli --cluster create` forms a cluster: slots assigned, config epochs set, every
//! node met, replicas attached, then a wait for `cluster_state:ok` everywhere. The nodes
//! are children of the proxy: they stop when it stops (SHUTDOWN NOSAVE, then a kill).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tracing::info;

use lagwise_shared::topology::NodeAddr;

const PRIMARIES: usize = 3;
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

pub struct DemoCluster {
    pub dir: PathBuf,
    nodes: Vec<(u16, Child)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot find lagwise-node next to lagwise-proxy ({0}); build it with `cargo build --release` (or set LAGWISE_NODE_BIN)")]
    NoNodeBinary(String),
    #[error("demo cluster: {0}")]
    Io(#[from] std::io::Error),
    #[error("demo cluster: {0}")]
    Form(String),
}

/// The node binary: `LAGWISE_NODE_BIN`, else beside our own executable.
fn node_binary() -> Result<PathBuf, DemoError> {
    if let Some(p) = std::env::var_os("LAGWISE_NODE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    let candidate = me.with_file_name("lagwise-node");
    if candidate.exists() {
        Ok(candidate)
    } else {
        Err(DemoError::NoNodeBinary(candidate.display().to_string()))
    }
}

/// A loopback port that is free, and whose cluster bus port (+10000) is free too.
fn free_port(taken: &[u16]) -> Result<u16, DemoError> {
    for _ in 0..200 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        drop(l);
        if port > 55000 || taken.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return Ok(port);
        }
    }
    Err(DemoError::Form("no free ports".into()))
}

impl DemoCluster {
    /// Starts and forms the cluster; returns once every node reports `cluster_state:ok`.
    pub async fn start(dir: Option<PathBuf>) -> Result<DemoCluster, DemoError> {
        let bin = node_binary()?;
        let dir = match dir {
            Some(d) => d,
            None => std::env::temp_dir().join(format!("lagwise-demo-{}", std::process::id())),
        };
        std::fs::create_dir_all(&dir)?;
        let mut cluster = DemoCluster {
            dir: dir.clone(),
            nodes: Vec::new(),
        };
        let mut ports = Vec::new();
        for _ in 0..PRIMARIES * 2 {
            let p = free_port(&ports)?;
            ports.push(p);
        }
        for &port in &ports {
            let child = spawn_node(&bin, &dir, port)?;
            cluster.nodes.push((port, child));
        }
        cluster.form(&ports).await?;
        info!(dir = %dir.display(), nodes = ?ports, "demo cluster ready");
        Ok(cluster)
    }

    pub fn seeds(&self) -> Vec<NodeAddr> {
        self.nodes
            .iter()
            .map(|(p, _)| NodeAddr(format!("127.0.0.1:{p}").into()))
            .collect()
    }

    async fn form(&mut self, ports: &[u16]) -> Result<(), DemoError> {
        for &p in ports {
            wait_for(p, &["PING"], |r| r == "PONG").await?;
        }
        let per = 16384 / PRIMARIES;
        for (i, &p) in ports[..PRIMARIES].iter().enumerate() {
            let start = i * per;
            let end = if i + 1 == PRIMARIES {
                16383
            } else {
                (i + 1) * per - 1
            };
            expect_ok(
                p,
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &start.to_string(),
                    &end.to_string(),
                ],
            )
            .await?;
        }
        for (i, &p) in ports.iter().enumerate() {
            expect_ok(p, &["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()]).await?;
        }
        for &p in &ports[1..] {
            expect_ok(p, &["CLUSTER", "MEET", "127.0.0.1", &ports[0].to_string()]).await?;
        }
        let total = ports.len().to_string();
        for &p in ports {
            let want = format!("cluster_known_nodes:{total}");
            wait_for(p, &["CLUSTER", "INFO"], |r| r.contains(&want)).await?;
        }
        for (i, &p) in ports[PRIMARIES..].iter().enumerate() {
            let primary_id = query(ports[i], &["CLUSTER", "MYID"]).await?;
            expect_ok(p, &["CLUSTER", "REPLICATE", &primary_id]).await?;
        }
        for &p in ports {
            wait_for(p, &["CLUSTER", "INFO"], |r| r.contains("cluster_state:ok")).await?;
        }
        for &p in &ports[PRIMARIES..] {
            wait_for(p, &["INFO", "replication"], |r| {
                r.contains("master_link_status:up")
            })
            .await?;
        }
        Ok(())
    }

    /// Stops every node: SHUTDOWN NOSAVE, then a kill for any that lingers.
    pub async fn stop(mut self) {
        for (port, _) in &self.nodes {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                query(*port, &["SHUTDOWN", "NOSAVE"]),
            )
            .await;
        }
        for (_, child) in &mut self.nodes {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        info!(dir = %self.dir.display(), "demo cluster stopped (its data and logs stay there)");
    }
}

fn spawn_node(bin: &Path, dir: &Path, port: u16) -> Result<Child, DemoError> {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir)?;
    let log = std::fs::File::create(node_dir.join("node.log"))?;
    let child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &node_dir.display().to_string(),
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "2000",
            "--save",
            "",
            "--repl-diskless-sync-delay",
            "0",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    Ok(child)
}

async fn expect_ok(port: u16, args: &[&str]) -> Result<(), DemoError> {
    let r = query(port, args).await?;
    if r == "OK" {
        Ok(())
    } else {
        Err(DemoError::Form(format!(
            "{} on :{port}: {r}",
            args.join(" ")
        )))
    }
}

/// Asks `args` until `done` accepts the reply, or gives up after FORM_TIMEOUT.
async fn wait_for(port: u16, args: &[&str], done: impl Fn(&str) -> bool) -> Result<(), DemoError> {
    let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match query(port, args).await {
            Ok(r) if done(&r) => return Ok(()),
            Ok(r) => last = r,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(DemoError::Form(format!(
        "node :{port} never answered {} as expected (last: {last})",
        args.join(" ")
    )))
}

/// One command on a fresh connection; the reply as text (simple, bulk or error).
async fn query(port: u16, args: &[&str]) -> Result<String, DemoError> {
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| DemoError::Form(format!("connecting to :{port} timed out")))??;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let reply = loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut chunk))
            .await
            .map_err(|_| DemoError::Form(format!(":{port} did not answer")))??;
        if n == 0 {
            return Err(DemoError::Form(format!(":{port} closed the connection")));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            return Err(DemoError::Form(format!(":{port} sent too much")));
        }
        if let Ok(Some(len)) = crate::reply::frame_len(&buf, crate::reply::Protocol::Resp2) {
            break &buf[..len];
        }
    };
    let text = match reply.first() {
        Some(b'$') => crate::reply::bulk_payload(reply)
            .unwrap_or_default()
            .to_vec(),
        Some(b'+') | Some(b'-') => reply[1..reply.len().saturating_sub(2)].to_vec(),
        _ => reply.to_vec(),
    };
    Ok(String::from_utf8_lossy(&text).into_owned())
}
