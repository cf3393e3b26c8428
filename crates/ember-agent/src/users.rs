//! The guest's user database, read from `/etc/passwd` and `/etc/group` directly.
//!
//! Owns looking up an account (uid, gid, home, shell), its supplementary groups, and the names
//! Stat reports for ids. The files are parsed as they are on each call (they are small, and a
//! tenant may add users at any time); NSS is not consulted, so a static binary needs no
//! `libnss_*`. It does not switch users (the spawner does).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

/// Where the database lives (`/etc` in a guest; tests may point elsewhere).
#[derive(Debug, Clone)]
pub struct UserDb {
    passwd: std::path::PathBuf,
    group: std::path::PathBuf,
}

impl Default for UserDb {
    fn default() -> Self {
        UserDb::at(Path::new("/etc"))
    }
}

impl UserDb {
    /// The database in directory `etc` (`passwd` and `group`).
    pub fn at(etc: &Path) -> Self {
        UserDb {
            passwd: etc.join("passwd"),
            group: etc.join("group"),
        }
    }

    fn read(path: &Path) -> io::Result<String> {
        match fs::read(path) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            // No database: no users (a minimal image), not an error.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e),
        }
    }

    /// Every account, in file order.
    pub fn accounts(&self) -> io::Result<Vec<Account>> {
        Ok(Self::read(&self.passwd)?
            .lines()
            .filter_map(parse_passwd_line)
            .collect())
    }

    /// The account named `name` (or, if `name` is all digits and no account has that name,
    /// the account with that uid).
    pub fn by_name(&self, name: &str) -> io::Result<Option<Account>> {
        let accounts = self.accounts()?;
        if let Some(a) = accounts.iter().find(|a| a.name == name) {
            return Ok(Some(a.clone()));
        }
        Ok(name
            .parse::<u32>()
            .ok()
            .and_then(|uid| accounts.into_iter().find(|a| a.uid == uid)))
    }

    /// The account with user id `uid`.
    pub fn by_uid(&self, uid: u32) -> io::Result<Option<Account>> {
        Ok(self.accounts()?.into_iter().find(|a| a.uid == uid))
    }

    /// The groups `account` is in: its primary group, then every group listing it as a member.
    pub fn groups_of(&self, account: &Account) -> io::Result<Vec<u32>> {
        let mut groups = vec![account.gid];
        for line in Self::read(&self.group)?.lines() {
            let mut fields = line.split(':');
            let (Some(_name), Some(_pw), Some(gid), Some(members)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(gid) = gid.parse::<u32>() else {
                continue;
            };
            if members.split(',').any(|m| m == account.name) && !groups.contains(&gid) {
                groups.push(gid);
            }
        }
        Ok(groups)
    }

    /// Names by id of every user and group (for Stat and ListDir).
    pub fn names(&self) -> Names {
        let users = self
            .accounts()
            .unwrap_or_default()
            .into_iter()
            .map(|a| (a.uid, a.name))
            .collect();
        let groups = Self::read(&self.group)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let gid = fields.nth(1)?.parse::<u32>().ok()?;
                Some((gid, name.to_owned()))
            })
            .collect();
        Names { users, groups }
    }
}

/// User and group names by id, loaded once per request.
#[derive(Debug, Clone, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// The user's name, or its decimal uid.
    pub fn user(&self, uid: u32) -> String {
        fit(self.users.get(&uid), uid)
    }

    /// The group's name, or its decimal gid.
    pub fn group(&self, gid: u32) -> String {
        fit(self.groups.get(&gid), gid)
    }
}

/// A name the protocol can carry (≤ 64 bytes, no NUL), else the id.
fn fit(name: Option<&String>, id: u32) -> String {
    name.filter(|n| {
        !n.is_empty() && n.len() <= ember_agent_proto::limits::MAX_USER_LEN && !n.contains('\0')
    })
    .cloned()
    .unwrap_or_else(|| id.to_string())
}

fn parse_passwd_line(line: &str) -> Option<Account> {
    if line.starts_with('#') {
        return None;
    }
    let mut fields = line.split(':');
    let name = fields.next()?;
    let _password = fields.next()?;
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    let _gecos = fields.next()?;
    let home = fields.next()?;
    let shell = fields.next().unwrap_or("");
    if name.is_empty() {
        return None;
    }
    Some(Account {
        name: name.to_owned(),
        uid,
        gid,
        home: home.to_owned(),
        shell: shell.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, UserDb) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\n# comment\nbroken line\n\
             user:x:1000:1000:User,,,:/home/user:/bin/sh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("group"),
            "root:x:0:\nuser:x:1000:\nsudo:x:27:user,other\ndocker:x:999:other,user\nnogroup:x:65534:\n",
        )
        .unwrap();
        let db = UserDb::at(dir.path());
        (dir, db)
    }

    #[test]
    fn accounts_are_found_by_name_and_uid() {
        let (_dir, db) = db();
        let user = db.by_name("user").unwrap().unwrap();
        assert_eq!((user.uid, user.gid), (1000, 1000));
        assert_eq!(user.home, "/home/user");
        assert_eq!(db.by_name("1000").unwrap().unwrap().name, "user");
        assert_eq!(db.by_name("ghost").unwrap(), None);
        assert_eq!(db.by_uid(65534).unwrap().unwrap().name, "nobody");
        assert_eq!(db.accounts().unwrap().len(), 3);
    }

    #[test]
    fn supplementary_groups_come_from_member_lists() {
        let (_dir, db) = db();
        let user = db.by_name("user").unwrap().unwrap();
        assert_eq!(db.groups_of(&user).unwrap(), vec![1000, 27, 999]);
        let root = db.by_name("root").unwrap().unwrap();
        assert_eq!(db.groups_of(&root).unwrap(), vec![0]);
    }

    #[test]
    fn names_fall_back_to_ids() {
        let (_dir, db) = db();
        let names = db.names();
        assert_eq!(names.user(0), "root");
        assert_eq!(names.group(27), "sudo");
        assert_eq!(names.user(4242), "4242");
        let missing = UserDb::at(Path::new("/nonexistent-etc"));
        assert_eq!(missing.by_name("root").unwrap(), None);
        assert_eq!(missing.names().group(0), "0");
    }
}
