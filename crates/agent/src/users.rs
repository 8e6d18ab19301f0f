//! Resolves a user name or numeric uid through `/etc/passwd` and `/etc/group`.

use std::io;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    /// Supplementary groups (including the primary one).
    pub groups: Vec<u32>,
}

impl User {
    pub fn root() -> User {
        User {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
            shell: "/bin/sh".into(),
            groups: vec![0],
        }
    }
}

/// Looks `spec` (a name, or a uid) up. A numeric uid without a passwd entry is allowed
/// (gid = uid, home `/`), as in `docker run --user 1234`.
pub fn lookup(spec: &str) -> io::Result<User> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    lookup_in(spec, &passwd, &group)
}

fn lookup_in(spec: &str, passwd: &str, group: &str) -> io::Result<User> {
    let numeric: Option<u32> = spec.parse().ok();
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let uid: u32 = f[2].parse().ok()?;
        let gid: u32 = f[3].parse().ok()?;
        let hit = match numeric {
            Some(n) => n == uid,
            None => f[0] == spec,
        };
        hit.then(|| User {
            name: f[0].to_string(),
            uid,
            gid,
            home: f[5].to_string(),
            shell: f[6].to_string(),
            groups: vec![gid],
        })
    });
    let mut user = match (entry, numeric) {
        (Some(u), _) => u,
        (None, Some(0)) => User::root(),
        (None, Some(n)) => User {
            name: n.to_string(),
            uid: n,
            gid: n,
            home: "/".into(),
            shell: "/bin/sh".into(),
            groups: vec![n],
        },
        (None, None) => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("user `{spec}` is not in /etc/passwd"),
            ))
        }
    };
    for l in group.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let Ok(gid) = f[2].parse::<u32>() else {
            continue;
        };
        if f[3].split(',').any(|m| m == user.name) && !user.groups.contains(&gid) {
            user.groups.push(gid);
        }
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nbad line\nsprite:x:1000:1000::/home/sprite:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:sprite\nusers:x:100:other,sprite\n";

    #[test]
    fn by_name_and_uid_with_groups() {
        let u = lookup_in("sprite", PASSWD, GROUP).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_str()),
            (1000, 1000, "/home/sprite")
        );
        assert_eq!(u.groups, vec![1000, 27, 100]);
        assert_eq!(lookup_in("1000", PASSWD, GROUP).unwrap().name, "sprite");
        assert_eq!(lookup_in("4321", PASSWD, GROUP).unwrap().gid, 4321);
        assert!(lookup_in("nobody-here", PASSWD, GROUP).is_err());
    }
}
