//! `sh -c SCRIPT` for agents without a shell (the probe guest, the test agent): no_std, no
//! allocation.
//!
//! Owns recognising a shell invocation in an Exec `argv` and splitting a script made of one
//! simple command into its words. Clients such as E2B's SDK wrap every command in
//! `/bin/bash -l -c '...'`; an agent whose "programs" are built-ins unwraps it with
//! [`shell_script`] and runs [`script_words`] as the argv. It is not a shell: anything that
//! would need one (quotes, escapes, pipes, redirections, `;`, `&`, `&&`, newlines between
//! commands, variables, globs, brace or tilde expansion, comments, a leading `VAR=value`) is
//! refused, never guessed at.

/// Programs taken for a shell (`argv[0]`).
pub const SHELLS: [&[u8]; 6] = [
    b"sh",
    b"bash",
    b"/bin/sh",
    b"/bin/bash",
    b"/usr/bin/sh",
    b"/usr/bin/bash",
];

/// Why a shell invocation or its script cannot be run.
pub const NOT_ONE_COMMAND: &str = "this agent's sh only runs one simple command: no quotes, \
    escapes, pipes, redirections, ;, &, &&, newlines, variables, globs, comments or assignments";

/// Why a shell invocation's options cannot be run.
pub const ONLY_DASH_C: &str =
    "this agent's sh only runs `sh [-l] [-i] [-e] -c SCRIPT` (also -lc, --login)";

/// Bytes that mean more than a word separator to a shell.
const SPECIAL: &[u8] = b"'\"`\\|&;<>()$*?[]{}~#!\n";

/// If `argv` runs a shell (`argv[0]` is one of [`SHELLS`]), its `-c` script (`Ok`), or why this
/// module cannot run it (`Err`, e.g. a script file or an unknown option); `None` for any other
/// program. Options before the script may be `-l`, `-i`, `-e`, `--login`, or combinations such
/// as `-lc`; exactly one of them has a `c`. Arguments after the script (`$0`, `$1`, ... to a
/// shell) are ignored.
pub fn shell_script<'a, I>(argv: I) -> Option<Result<&'a [u8], &'static str>>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut args = argv.into_iter();
    let program = args.next()?;
    if !SHELLS.contains(&program) {
        return None;
    }
    let mut dash_c = false;
    for arg in args.by_ref() {
        if arg == b"--login" {
            continue;
        }
        let Some(letters) = arg.strip_prefix(b"-").filter(|l| !l.is_empty()) else {
            return Some(Err(ONLY_DASH_C));
        };
        for &letter in letters {
            match letter {
                b'l' | b'i' | b'e' => {}
                b'c' if !dash_c => dash_c = true,
                _ => return Some(Err(ONLY_DASH_C)),
            }
        }
        if dash_c {
            break;
        }
    }
    match (dash_c, args.next()) {
        (true, Some(script)) => Some(Ok(script)),
        _ => Some(Err(ONLY_DASH_C)),
    }
}

/// The words of `script` if it is one simple command (split on ASCII whitespace; an empty
/// script has none, which a shell runs as success), or [`NOT_ONE_COMMAND`].
pub fn script_words(script: &[u8]) -> Result<ScriptWords<'_>, &'static str> {
    let end = script
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let script = script.get(..end).unwrap_or_default();
    if script.iter().any(|b| SPECIAL.contains(b)) {
        return Err(NOT_ONE_COMMAND);
    }
    let words = ScriptWords { rest: script };
    // `VAR=value cmd` sets a variable for the command.
    if words.clone().next().is_some_and(|w| w.contains(&b'=')) {
        return Err(NOT_ONE_COMMAND);
    }
    Ok(words)
}

/// The words of a script, in order ([`script_words`]).
#[derive(Clone, Debug)]
pub struct ScriptWords<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ScriptWords<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|b| !b.is_ascii_whitespace())?;
        let rest = self.rest.get(start..).unwrap_or_default();
        let len = rest
            .iter()
            .position(u8::is_ascii_whitespace)
            .unwrap_or(rest.len());
        let (word, rest) = rest.split_at(len);
        self.rest = rest;
        Some(word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script<'a>(argv: &'a [&'a str]) -> Option<Result<&'a [u8], &'static str>> {
        shell_script(argv.iter().map(|a| a.as_bytes()))
    }

    fn words(s: &str) -> Result<([&[u8]; 8], usize), &'static str> {
        let mut out: [&[u8]; 8] = [b""; 8];
        let mut n = 0;
        for w in script_words(s.as_bytes())? {
            out[n] = w;
            n += 1;
        }
        Ok((out, n))
    }

    #[test]
    fn shell_invocations_are_recognised() {
        assert_eq!(script(&["echo", "-c", "x"]), None);
        assert_eq!(
            script(&["/bin/bash", "-l", "-c", "echo hi"]),
            Some(Ok(&b"echo hi"[..]))
        );
        assert_eq!(script(&["bash", "-lc", "x"]), Some(Ok(&b"x"[..])));
        assert_eq!(
            script(&["sh", "-c", "x", "name", "arg"]),
            Some(Ok(&b"x"[..]))
        );
        assert_eq!(
            script(&["sh", "--login", "-i", "-c", "x"]),
            Some(Ok(&b"x"[..]))
        );
        for bad in [
            &["sh"][..],
            &["sh", "-l"],
            &["sh", "-c"],
            &["bash", "script.sh"],
            &["bash", "-x", "-c", "x"],
            &["bash", "-cc", "x"],
            &["bash", "-", "-c", "x"],
        ] {
            assert_eq!(script(bad), Some(Err(ONLY_DASH_C)), "{bad:?}");
        }
    }

    #[test]
    fn one_simple_command_is_split_into_words() {
        let (w, n) = words("  echo   hi\tthere \n").unwrap();
        assert_eq!(&w[..n], &[&b"echo"[..], b"hi", b"there"]);
        let (_, n) = words("").unwrap();
        assert_eq!(n, 0);
        let (w, n) = words("cat /a").unwrap();
        assert_eq!(&w[..n], &[&b"cat"[..], b"/a"]);
        let (w, n) = words("echo a=b").unwrap();
        assert_eq!(&w[..n], &[&b"echo"[..], b"a=b"]);
        for bad in [
            "echo a; echo b",
            "echo a && echo b",
            "echo a | cat",
            "echo 'a b'",
            "echo \"a\"",
            "echo $HOME",
            "echo a > /f",
            "echo *",
            "echo a\necho b",
            "echo a & ",
            "A=1 echo",
            "echo ~",
            "echo a\\ b",
            "# comment",
        ] {
            assert_eq!(words(bad).unwrap_err(), NOT_ONE_COMMAND, "{bad:?}");
        }
    }
}
