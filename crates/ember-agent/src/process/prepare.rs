//! Turning a request's argv, env, cwd and user into a [`SpawnSpec`], with clear refusals.
//!
//! Owns the checks made before anything is forked: the user exists (`INVALID_ARGUMENT`) and the
//! agent may become it (`PERMISSION_DENIED`); the working directory exists (`NOT_FOUND`) and is
//! one (`NOT_A_DIRECTORY`); the program is found on `PATH` (`NOT_FOUND`: command not found). And
//! the environment a command starts with: `PATH`, `HOME`, `USER`, `LOGNAME`, `SHELL` of the user,
//! `PWD`, then the request's entries over them. It does not fork.
#![forbid(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ember_agent_proto::{ByteList, ErrorCode};

use super::spawn::{Credentials, SpawnError, SpawnSpec, Step};
use crate::paths::Resolver;
use crate::refusal::Refusal;
use crate::users::UserDb;

/// `PATH` when the request sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command as a request gives it.
#[derive(Debug, Clone, Copy)]
pub struct CommandRequest<'r> {
    /// Program and arguments.
    pub argv: ByteList<'r>,
    /// `KEY=VALUE` entries.
    pub env: ByteList<'r>,
    /// Working directory; empty: the named user's home when it is a directory (as a login
    /// starts there), else the agent's default.
    pub cwd: &'r [u8],
    /// User; empty: the agent's own.
    pub user: &'r str,
}

/// Checks `request` and builds what to spawn.
pub fn prepare(
    request: &CommandRequest<'_>,
    resolver: &Resolver,
    users: &UserDb,
) -> Result<SpawnSpec, Refusal> {
    let own_uid = nix::unistd::geteuid().as_raw();
    let lookup = |what: &str, e: std::io::Error| Refusal::io(format!("reading {what}"), &e);
    let (account, credentials) = if request.user.is_empty() {
        (
            users
                .by_uid(own_uid)
                .map_err(|e| lookup("/etc/passwd", e))?,
            None,
        )
    } else {
        let account = users
            .by_name(request.user)
            .map_err(|e| lookup("/etc/passwd", e))?
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::INVALID_ARGUMENT,
                    format!("no such user: {}", request.user),
                )
            })?;
        if own_uid != 0 && account.uid != own_uid {
            return Err(Refusal::new(
                ErrorCode::PERMISSION_DENIED,
                format!(
                    "the agent (uid {own_uid}) cannot run commands as {}",
                    request.user
                ),
            ));
        }
        let groups = users
            .groups_of(&account)
            .map_err(|e| lookup("/etc/group", e))?;
        let credentials = Credentials {
            uid: account.uid,
            gid: account.gid,
            groups,
        };
        (Some(account), Some(credentials))
    };

    let home = match (&account, request.cwd.is_empty() && !request.user.is_empty()) {
        (Some(a), true) => Some(std::path::PathBuf::from(&a.home)).filter(|h| h.is_dir()),
        _ => None,
    };
    let cwd = home.unwrap_or_else(|| resolver.resolve(request.cwd));
    match std::fs::metadata(&cwd) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(Refusal::new(
                ErrorCode::NOT_A_DIRECTORY,
                format!("working directory {}: not a directory", cwd.display()),
            ));
        }
        Err(e) => {
            return Err(Refusal::io(
                format!("working directory {}", cwd.display()),
                &e,
            ));
        }
    }

    let mut env: Vec<(Vec<u8>, Vec<u8>)> = vec![(b"PATH".to_vec(), DEFAULT_PATH.into())];
    if let Some(a) = &account {
        env.push((b"HOME".to_vec(), a.home.clone().into_bytes()));
        env.push((b"USER".to_vec(), a.name.clone().into_bytes()));
        env.push((b"LOGNAME".to_vec(), a.name.clone().into_bytes()));
        if !a.shell.is_empty() {
            env.push((b"SHELL".to_vec(), a.shell.clone().into_bytes()));
        }
    }
    env.push((b"PWD".to_vec(), cwd.as_os_str().as_bytes().to_vec()));
    for entry in request.env.iter() {
        // The codec checked the form: an `=` at index ≥ 1.
        let eq = entry.iter().position(|b| *b == b'=').unwrap_or(entry.len());
        let (key, value) = entry.split_at(eq);
        let value = value.get(1..).unwrap_or_default();
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_vec(),
            None => env.push((key.to_vec(), value.to_vec())),
        }
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == b"PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();

    let argv0 = request.argv.get(0).unwrap_or_default();
    let program = find_program(argv0, &path_var, &cwd).ok_or_else(|| {
        Refusal::new(
            ErrorCode::NOT_FOUND,
            format!("command not found: {}", String::from_utf8_lossy(argv0)),
        )
    })?;

    let cstring = |bytes: Vec<u8>| {
        // The codec refuses NUL in argv, env and paths.
        CString::new(bytes).map_err(|_| Refusal::new(ErrorCode::INVALID_ARGUMENT, "NUL byte"))
    };
    Ok(SpawnSpec {
        program: cstring(program.into_os_string().into_vec_bytes())?,
        argv: request
            .argv
            .iter()
            .map(|a| cstring(a.to_vec()))
            .collect::<Result<_, _>>()?,
        env: env
            .into_iter()
            .map(|(mut k, v)| {
                k.push(b'=');
                k.extend_from_slice(&v);
                cstring(k)
            })
            .collect::<Result<_, _>>()?,
        cwd: cstring(cwd.into_os_string().into_vec_bytes())?,
        credentials,
        controlling_tty: false,
    })
}

trait IntoVecBytes {
    fn into_vec_bytes(self) -> Vec<u8>;
}

impl IntoVecBytes for std::ffi::OsString {
    fn into_vec_bytes(self) -> Vec<u8> {
        std::os::unix::ffi::OsStringExt::into_vec(self)
    }
}

/// Where `argv0` is: itself if it has a `/` (relative to `cwd`), else the first executable file
/// of that name on `path_var`.
pub fn find_program(argv0: &[u8], path_var: &[u8], cwd: &Path) -> Option<PathBuf> {
    if argv0.is_empty() {
        return None;
    }
    let name = Path::new(OsStr::from_bytes(argv0));
    if argv0.contains(&b'/') {
        let full = cwd.join(name);
        // Let exec judge permissions: a file that is there is found.
        return full.exists().then(|| name.to_path_buf());
    }
    path_var
        .split(|b| *b == b':')
        .map(|dir| {
            if dir.is_empty() {
                cwd.to_path_buf()
            } else {
                cwd.join(OsStr::from_bytes(dir))
            }
        })
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The refusal for a spawn that failed.
pub fn spawn_refusal(argv0: &[u8], e: &SpawnError) -> Refusal {
    let program = String::from_utf8_lossy(argv0);
    match e {
        SpawnError::Setup { what, errno } => Refusal::new(
            ErrorCode::INTERNAL,
            format!("starting {program}: {what}: {errno}"),
        ),
        SpawnError::Child { step, errno } => {
            let mut refusal = Refusal::errno(format!("starting {program}: {step}"), *errno);
            if *step == Step::Credentials && refusal.code == ErrorCode::INVALID_ARGUMENT {
                refusal.code = ErrorCode::PERMISSION_DENIED;
            }
            refusal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_path() {
        let sh = find_program(b"sh", DEFAULT_PATH.as_bytes(), Path::new("/")).unwrap();
        assert!(sh.ends_with("sh"));
        assert!(
            find_program(
                b"no-such-program-xyz",
                DEFAULT_PATH.as_bytes(),
                Path::new("/")
            )
            .is_none()
        );
        assert_eq!(
            find_program(b"/bin/sh", b"", Path::new("/")).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert!(find_program(b"./missing", b"", Path::new("/")).is_none());
        assert!(find_program(b"", DEFAULT_PATH.as_bytes(), Path::new("/")).is_none());
    }
}
