//! The proxy's own client authentication (issue 7): users from its config file, AUTH and
//! HELLO ... AUTH, admin commands refused for non-admin users, and a reload that changes a
//! password. In front of a 3 × 1 redis-server 7.0 cluster, with raw RESP and redis-py.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use lagwise_tests::wire::{bulk, cmd_str};
use lagwise_tests::{assert_reply, ProxyProcess, RedisCluster};

fn error_line(reply: &[u8]) -> String {
    assert_eq!(
        reply.first(),
        Some(&b'-'),
        "expected an error, got {}",
        String::from_utf8_lossy(reply)
    );
    String::from_utf8_lossy(reply).trim_end().to_string()
}

/// A proxy with a `default` admin password and a non-admin user `app`, from a config file.
fn proxy_with_users(cluster: &RedisCluster, dir: &std::path::Path) -> (ProxyProcess, String) {
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        "password = \"adminpw\"\n\n[[users]]\nname = \"app\"\npassword = \"apppw\"\n",
    )
    .unwrap();
    let path = path.to_str().unwrap().to_string();
    let proxy = ProxyProcess::start(&cluster.seeds(), &["--config", &path]);
    (proxy, path)
}

#[test]
fn clients_must_authenticate_and_only_admins_may_flush() {
    let cluster = RedisCluster::start(3, 1);
    let dir = tempdir();
    let (proxy, _) = proxy_with_users(&cluster, &dir);

    let mut raw = proxy.raw();
    let e = error_line(&cmd_str(&mut raw, &["GET", "k"]));
    assert!(e.starts_with("-NOAUTH Authentication required"), "{e}");
    let e = error_line(&cmd_str(&mut raw, &["PING"]));
    assert!(e.starts_with("-NOAUTH"), "{e}");
    let e = error_line(&cmd_str(&mut raw, &["HELLO", "3"]));
    assert!(e.starts_with("-NOAUTH HELLO must be called"), "{e}");
    let e = error_line(&cmd_str(&mut raw, &["AUTH", "app", "wrong"]));
    assert!(e.starts_with("-WRONGPASS"), "{e}");
    let e = error_line(&cmd_str(&mut raw, &["AUTH", "apppw"]));
    assert!(
        e.starts_with("-WRONGPASS"),
        "the bare form is the default user: {e}"
    );
    // Still not authenticated after the failures.
    assert!(error_line(&cmd_str(&mut raw, &["GET", "k"])).starts_with("-NOAUTH"));

    assert_reply!(cmd_str(&mut raw, &["AUTH", "app", "apppw"]), b"+OK\r\n");
    assert_reply!(cmd_str(&mut raw, &["SET", "auth:k", "v"]), b"+OK\r\n");
    assert_reply!(cmd_str(&mut raw, &["GET", "auth:k"]), bulk("v"));
    let e = error_line(&cmd_str(&mut raw, &["FLUSHALL"]));
    assert!(
        e.starts_with("-NOPERM this user has no permissions to run the 'flushall' command"),
        "{e}"
    );
    let e = error_line(&cmd_str(&mut raw, &["SCRIPT", "FLUSH"]));
    assert!(e.starts_with("-NOPERM"), "{e}");
    let e = error_line(&cmd_str(&mut raw, &["PROXY", "RELOAD"]));
    assert!(e.starts_with("-NOPERM"), "{e}");
    // The key survived the refused FLUSHALL.
    assert_reply!(cmd_str(&mut raw, &["GET", "auth:k"]), bulk("v"));
    // RESET drops the authentication.
    assert_reply!(cmd_str(&mut raw, &["RESET"]), b"+RESET\r\n");
    assert!(error_line(&cmd_str(&mut raw, &["GET", "auth:k"])).starts_with("-NOAUTH"));

    // HELLO 3 AUTH authenticates and switches protocol at once; the default user is admin.
    let mut admin = proxy.raw();
    let hello = cmd_str(&mut admin, &["HELLO", "3", "AUTH", "default", "adminpw"]);
    assert_eq!(
        hello.first(),
        Some(&b'%'),
        "{}",
        String::from_utf8_lossy(&hello)
    );
    assert_reply!(cmd_str(&mut admin, &["FLUSHALL"]), b"+OK\r\n");
    assert_reply!(cmd_str(&mut admin, &["GET", "auth:k"]), b"_\r\n");
    assert_reply!(cmd_str(&mut admin, &["PROXY", "RELOAD"]), bulk("reloaded"));
}

#[test]
fn redis_py_with_a_password_works_through_the_proxy() {
    if Command::new("python3")
        .args(["-c", "import redis"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with the redis package is required in CI"
        );
        eprintln!("skipped: python3 -c 'import redis' failed");
        return;
    }
    let cluster = RedisCluster::start(3, 1);
    let dir = tempdir();
    let (proxy, _) = proxy_with_users(&cluster, &dir);
    // redis-py's default client: RESP2 with AUTH, then RESP3 with HELLO 3 AUTH, and the
    // CLIENT SETINFO it sends on connect.
    let script = format!(
        r#"
import redis
for proto in (2, 3):
    r = redis.Redis(host="127.0.0.1", port={port}, username="app", password="apppw", protocol=proto)
    r.set("py:%d" % proto, "v%d" % proto)
    assert r.get("py:%d" % proto) == b"v%d" % proto
    try:
        r.flushall()
        raise SystemExit("FLUSHALL should be refused")
    except redis.exceptions.NoPermissionError:
        pass
try:
    redis.Redis(host="127.0.0.1", port={port}, username="app", password="nope").ping()
    raise SystemExit("a wrong password should fail")
except redis.exceptions.AuthenticationError:
    pass
print("ok")
"#,
        port = proxy.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "redis-py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_reload_changes_a_password_and_a_bad_one_keeps_the_old() {
    let cluster = RedisCluster::start(3, 1);
    let dir = tempdir();
    let (proxy, path) = proxy_with_users(&cluster, &dir);
    let mut admin = proxy.raw();
    assert_reply!(cmd_str(&mut admin, &["AUTH", "adminpw"]), b"+OK\r\n");

    std::fs::write(
        &path,
        "password = \"adminpw\"\n\n[[users]]\nname = \"app\"\npassword = \"newpw\"\n",
    )
    .unwrap();
    assert_reply!(cmd_str(&mut admin, &["PROXY", "RELOAD"]), bulk("reloaded"));
    let mut raw = proxy.raw();
    assert!(error_line(&cmd_str(&mut raw, &["AUTH", "app", "apppw"])).starts_with("-WRONGPASS"));
    assert_reply!(cmd_str(&mut raw, &["AUTH", "app", "newpw"]), b"+OK\r\n");

    // An empty password is refused whole: the running users stay.
    std::fs::write(
        &path,
        "password = \"adminpw\"\n\n[[users]]\nname = \"app\"\npassword = \"\"\n",
    )
    .unwrap();
    let e = error_line(&cmd_str(&mut admin, &["PROXY", "RELOAD"]));
    assert!(
        e.contains("config reload refused") && e.contains("users"),
        "{e}"
    );
    let mut raw = proxy.raw();
    assert_reply!(cmd_str(&mut raw, &["AUTH", "app", "newpw"]), b"+OK\r\n");
}

fn tempdir() -> std::path::PathBuf {
    lagwise_tests::fresh_temp_dir("proxy-auth")
}
