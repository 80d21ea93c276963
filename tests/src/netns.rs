//! Network namespaces joined by a bridge: hosts whose links a test can cut, for partitions.
//!
//! [`Lab::create`] builds, for one test process:
//!
//! ```text
//!            root namespace (the test)                   one namespace per host
//!   bridge lwp<pid>b  10.77.X.254/24  --+-- veth lwp<pid>h1 == lwp<pid>n1  10.77.X.1/24  (ns lwp<pid>-1)
//!                                       +-- veth lwp<pid>h2 == lwp<pid>n2  10.77.X.2/24  (ns lwp<pid>-2)
//!                                       +-- ...
//! ```
//!
//! `X` is chosen from the process id so that concurrent test processes do not collide, and
//! skipped while any interface or route of the root namespace already uses `10.77.X.0/24`.
//! Processes run in a host with [`Lab::command`] (`ip netns exec <ns> <program>`, which execs
//! the program: the child's pid is the program's). [`Lab::cut`] sets the bridge side of a
//! host's veth down: the host can then reach nobody, and nobody (the test included) can reach
//! it, while traffic inside its namespace goes on. [`Lab::heal`] sets it up again.
//!
//! Dropping the lab deletes the namespaces, the veths and the bridge, also when the test
//! panicked; stop the processes inside first (a namespace lives on while a process is in
//! it). Leftovers of test processes that died without cleaning up (SIGKILL) are removed by
//! the next [`Lab::create`].
//!
//! Needs root and iproute2's `ip`; [`unavailable`] says why a test cannot run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::fixture::fresh_temp_dir;

/// Names of everything a lab creates start with this, then the test process id.
const PREFIX: &str = "lwp";
/// The lab subnets are `10.77.X.0/24`.
const SUBNET_BASE: &str = "10.77";
/// The root namespace's address on the bridge: `10.77.X.254`.
const ROOT_HOST: u8 = 254;

/// Why network-namespace tests cannot run here (not root, no `ip`, namespaces refused), or
/// `None` if they can.
pub fn unavailable() -> Option<String> {
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some(format!("not running as root (uid {uid:?})"));
    }
    match ip(&["netns", "list"]) {
        Ok(_) => None,
        Err(e) => Some(format!("`ip netns list` does not work: {e}")),
    }
}

/// Runs `ip <args>`; `Err` with its output unless it succeeds.
fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip {args:?}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "ip {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// One host: a namespace with one address, linked to the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name.
    pub ns: String,
    /// Its address, e.g. `10.77.3.1`.
    pub ip: String,
    /// The veth end attached to the bridge (in the root namespace): what [`Lab::cut`] sets down.
    pub bridge_side: String,
}

/// A bridge in the root namespace and one namespace per host. Dropping it removes them.
#[derive(Debug)]
pub struct Lab {
    tag: String,
    bridge: String,
    subnet: String,
    hosts: Vec<Host>,
    dir: PathBuf,
}

impl Lab {
    /// Creates `hosts` namespaces (at most 250) with addresses `10.77.X.1`... and the bridge
    /// with `10.77.X.254`, all up, and checks that the root namespace reaches each host.
    /// Anything created before a failure is removed again.
    pub fn create(hosts: usize) -> Result<Lab, String> {
        assert!((1..=250).contains(&hosts), "1..=250 hosts, not {hosts}");
        remove_leftovers();
        let pid = std::process::id();
        let tag = format!("{PREFIX}{pid}");
        let subnet = pick_subnet(pid)?;
        let mut lab = Lab {
            bridge: format!("{tag}b"),
            tag,
            subnet,
            hosts: Vec::new(),
            dir: fresh_temp_dir("netns"),
        };
        // On an error `lab` is dropped, which removes whatever exists by then.
        ip(&["link", "add", &lab.bridge, "type", "bridge"])?;
        let root_addr = format!("{}.{ROOT_HOST}/24", lab.subnet);
        ip(&["addr", "add", &root_addr, "dev", &lab.bridge])?;
        ip(&["link", "set", &lab.bridge, "up"])?;
        for n in 1..=hosts {
            let host = Host {
                ns: format!("{}-{n}", lab.tag),
                ip: format!("{}.{n}", lab.subnet),
                bridge_side: format!("{}h{n}", lab.tag),
            };
            let inside = format!("{}n{n}", lab.tag);
            ip(&["netns", "add", &host.ns])?;
            lab.hosts.push(host.clone());
            ip(&[
                "link",
                "add",
                &host.bridge_side,
                "type",
                "veth",
                "peer",
                "name",
                &inside,
            ])?;
            ip(&["link", "set", &inside, "netns", &host.ns])?;
            ip(&["link", "set", &host.bridge_side, "master", &lab.bridge])?;
            ip(&["link", "set", &host.bridge_side, "up"])?;
            let addr = format!("{}/24", host.ip);
            ip(&["-n", &host.ns, "addr", "add", &addr, "dev", &inside])?;
            ip(&["-n", &host.ns, "link", "set", &inside, "up"])?;
            ip(&["-n", &host.ns, "link", "set", "lo", "up"])?;
        }
        for host in &lab.hosts {
            lab.wait_reachable(host)?;
        }
        Ok(lab)
    }

    /// The hosts, in order (host `i` has address `10.77.X.(i+1)`).
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i` (0-based).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The root namespace's address on the bridge.
    pub fn root_ip(&self) -> String {
        format!("{}.{ROOT_HOST}", self.subnet)
    }

    /// A directory for the processes of this lab (removed by a clean drop, kept on panic).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ip netns exec <ns of host i> <program>`: add the arguments and spawn it.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.hosts[i].ns])
            .arg(program);
        command
    }

    /// Cuts host `i` off: the bridge side of its veth goes down.
    pub fn cut(&self, i: usize) -> Result<(), String> {
        ip(&["link", "set", &self.hosts[i].bridge_side, "down"]).map(|_| ())
    }

    /// Reconnects host `i`.
    pub fn heal(&self, i: usize) -> Result<(), String> {
        ip(&["link", "set", &self.hosts[i].bridge_side, "up"]).map(|_| ())
    }

    /// `ip -br addr` and `ip -br link` of the root namespace and of every host, for messages.
    pub fn describe(&self) -> String {
        let mut out = format!("bridge {} ({}.{ROOT_HOST}/24):\n", self.bridge, self.subnet);
        out.push_str(&ip(&["-br", "link", "show", "master", &self.bridge]).unwrap_or_else(|e| e));
        for host in &self.hosts {
            out.push_str(&format!("ns {}: ", host.ns));
            out.push_str(&ip(&["-n", &host.ns, "-br", "addr"]).unwrap_or_else(|e| e));
        }
        out
    }

    /// Waits up to 10 s until a TCP connection from the root namespace to an unused port of
    /// `host` is refused (the host answered: the link works).
    fn wait_reachable(&self, host: &Host) -> Result<(), String> {
        let addr: std::net::SocketAddr = format!("{}:9", host.ip)
            .parse()
            .map_err(|e| format!("bad address {}: {e}", host.ip))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let last = match std::net::TcpStream::connect_timeout(
                &addr,
                std::time::Duration::from_secs(1),
            ) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
                Err(e) => e.to_string(),
            };
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "{} ({}) unreachable from the root namespace: {last}\n{}",
                    host.ns,
                    host.ip,
                    self.describe()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &self.hosts {
            // Deleting one end of a veth deletes both.
            let _ = ip(&["link", "del", &host.bridge_side]);
            if let Err(e) = ip(&["netns", "del", &host.ns]) {
                eprintln!("netns cleanup: {e}");
            }
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("netns cleanup: {e}");
        }
        if std::thread::panicking() {
            eprintln!("netns lab directory kept: {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A free `10.77.X` for this process: `X` from the pid, moved on while the root namespace
/// already has an address or a route in it.
fn pick_subnet(pid: u32) -> Result<String, String> {
    let used = format!(
        "{}\n{}",
        ip(&["-4", "addr"])?,
        ip(&["-4", "route", "show", "table", "all"])?
    );
    let start = pid % 250;
    for k in 0..250 {
        let x = (start + k) % 250;
        let subnet = format!("{SUBNET_BASE}.{x}");
        if !used.contains(&format!("{subnet}.")) {
            return Ok(subnet);
        }
    }
    Err(format!(
        "every {SUBNET_BASE}.X.0/24 is in use in the root namespace"
    ))
}

/// Removes namespaces and links named `lwp<pid>...` whose process no longer runs (a test
/// killed before its cleanup).
fn remove_leftovers() {
    let dead = |name: &str| -> bool {
        let digits: String = name
            .strip_prefix(PREFIX)
            .unwrap_or("")
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        !digits.is_empty() && !Path::new(&format!("/proc/{digits}")).exists()
    };
    if let Ok(list) = ip(&["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if dead(ns) {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
    if let Ok(links) = ip(&["-br", "link"]) {
        for link in links.lines().filter_map(|l| l.split_whitespace().next()) {
            let link = link.split('@').next().unwrap_or(link);
            if dead(link) {
                let _ = ip(&["link", "del", link]);
            }
        }
    }
}
