//! The proxy's own clients' authentication: users with passwords, some of them admins.
//!
//! Independent of the backends' credentials (the proxy authenticates to the nodes with its
//! own). With no users configured every client is an admin and AUTH is refused as by a server
//! without `requirepass`. With users, a connection must AUTH (or HELLO ... AUTH) first, and
//! only admin users may run the commands that act on the whole cluster (FLUSHALL, FLUSHDB,
//! SCRIPT FLUSH, FUNCTION changes) or on the proxy (PROXY RELOAD).

use serde::Deserialize;

/// A user as the configuration file declares it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
    /// May run admin commands (default false).
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    password: Vec<u8>,
    pub admin: bool,
}

/// The configured users; empty: no authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    users: Vec<User>,
}

impl Users {
    /// Builds the user list from the `password` setting (the `default` user, an admin, like
    /// a server's `requirepass`) and the `users` table. Errors name the problem.
    pub fn new(default_password: Option<String>, users: Vec<UserConfig>) -> Result<Users, String> {
        let mut out: Vec<User> = Vec::new();
        if let Some(p) = default_password {
            if p.is_empty() {
                return Err("the password is empty".into());
            }
            out.push(User {
                name: "default".into(),
                password: p.into_bytes(),
                admin: true,
            });
        }
        for u in users {
            if u.name.is_empty() || u.name.contains(char::is_whitespace) {
                return Err(format!("user name '{}' is empty or has spaces", u.name));
            }
            if u.password.is_empty() {
                return Err(format!("user '{}' has an empty password", u.name));
            }
            if out.iter().any(|o| o.name == u.name) {
                return Err(format!(
                    "user '{}' is declared twice (the `password` setting is the user 'default')",
                    u.name
                ));
            }
            out.push(User {
                name: u.name,
                password: u.password.into_bytes(),
                admin: u.admin,
            });
        }
        Ok(Users { users: out })
    }

    /// Whether clients must authenticate.
    pub fn required(&self) -> bool {
        !self.users.is_empty()
    }

    /// The user whose name and password these are.
    pub fn check(&self, name: &[u8], password: &[u8]) -> Option<&User> {
        self.users
            .iter()
            .find(|u| u.name.as_bytes() == name && same(&u.password, password))
    }
}

/// Compares without an early exit on the first differing byte, so the time taken does not
/// tell how much of a guessed password was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The commands only admin users may run: they act on the whole cluster or on the proxy.
pub fn is_admin_command(name: &str, sub: Option<&[u8]>) -> bool {
    // Asked for every request: the subcommand is compared in place, not lowercased.
    let sub_is =
        |subs: &[&[u8]]| sub.is_some_and(|s| subs.iter().any(|x| s.eq_ignore_ascii_case(x)));
    match name {
        "flushall" | "flushdb" => true,
        "script" => sub_is(&[b"flush", b"kill"]),
        "function" => sub_is(&[b"flush", b"delete", b"restore", b"kill", b"load"]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_passwords() {
        let none = Users::new(None, vec![]).expect("valid");
        assert!(!none.required());
        let users = Users::new(
            Some("s3cret".into()),
            vec![UserConfig {
                name: "app".into(),
                password: "apppass".into(),
                admin: false,
            }],
        )
        .expect("valid");
        assert!(users.required());
        assert!(users.check(b"default", b"s3cret").is_some_and(|u| u.admin));
        assert!(users.check(b"app", b"apppass").is_some_and(|u| !u.admin));
        assert!(users.check(b"app", b"apppas").is_none());
        assert!(users.check(b"app", b"s3cret").is_none());
        assert!(users.check(b"nobody", b"apppass").is_none());
        let twice = Users::new(
            Some("x".into()),
            vec![UserConfig {
                name: "default".into(),
                password: "y".into(),
                admin: true,
            }],
        );
        assert!(twice.is_err());
        assert!(Users::new(Some(String::new()), vec![]).is_err());
    }

    #[test]
    fn admin_commands() {
        assert!(is_admin_command("flushall", None));
        assert!(is_admin_command("script", Some(b"FLUSH")));
        assert!(!is_admin_command("script", Some(b"load")));
        assert!(!is_admin_command("get", None));
    }
}
