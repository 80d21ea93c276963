//! `lagwise-proxy --demo`, the README's main job: a local lagwise-node cluster behind the
//! proxy in one command, stopped with Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use lagwise_tests::cluster::proxy_binary;
use lagwise_tests::fixture::{node_binary, send_signal};

#[test]
fn demo_serves_a_lagwise_cluster_and_stops_on_ctrl_c() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let dir = std::env::temp_dir().join(format!("lagwise-demo-test-{}", std::process::id()));
    let mut child = Command::new(proxy_binary())
        .args(["--demo", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--demo-dir")
        .arg(&dir)
        .env("LAGWISE_NODE_BIN", node_binary())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lagwise-proxy --demo");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The endpoint is printed once the cluster is formed and the proxy listens.
    let announced = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains("connect to the proxy at") => break line,
            Ok(_) => continue,
            Err(e) => {
                let _ = child.kill();
                panic!("the demo never announced its endpoint: {e}");
            }
        }
    };
    assert!(
        announced.contains(&format!("127.0.0.1:{port}")),
        "{announced}"
    );

    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client");
    let mut con = client.get_connection().expect("connect to the proxy");
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("key:{i}"))
            .arg(i)
            .query(&mut con)
            .expect("SET through the proxy");
    }
    let keys: Vec<String> = (0..200).map(|i| format!("key:{i}")).collect();
    let values: Vec<i64> = redis::cmd("MGET").arg(&keys).query(&mut con).expect("MGET");
    assert_eq!(values, (0..200).collect::<Vec<i64>>());
    let size: i64 = redis::cmd("DBSIZE").query(&mut con).expect("DBSIZE");
    assert_eq!(size, 200, "the keys spread over three primaries add up");
    // The cluster behind it is three lagwise primaries with a replica each.
    let nodes_conf: Vec<_> = std::fs::read_dir(&dir)
        .expect("demo dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("nodes.conf").exists())
        .collect();
    assert_eq!(
        nodes_conf.len(),
        6,
        "six lagwise nodes under {}",
        dir.display()
    );

    send_signal(child.id(), "INT").expect("Ctrl-C");
    let status = (0..200)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            child.try_wait().ok().flatten()
        })
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("the demo did not stop within 20 s of Ctrl-C");
        });
    assert!(status.success(), "the demo exits 0 on Ctrl-C: {status:?}");
    // Its nodes are gone too: nothing answers on their ports any more.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the proxy still listens"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
