//! Who owns a file and who is asking: so an error from a daemon's files or its control
//! socket names both users when permissions are the cause, and says what to do.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The user name of `uid` from /etc/passwd, else `uid N`.
pub fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id: u32 = f.nth(1)?.parse().ok()?;
            (id == uid).then(|| name.to_owned())
        })
        .next()
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The user this process runs as.
pub fn current_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// When `error` is a permission failure on `path`, a clause naming the file's owner (or
/// its directory's) and the user running, with what to do; otherwise empty. For the end of
/// an error line: `"{path}: {error}{hint}"`.
pub fn permission_hint(path: &Path, error: &std::io::Error) -> String {
    if error.kind() != std::io::ErrorKind::PermissionDenied {
        return String::new();
    }
    let Some(meta) = path.metadata().ok().or_else(|| path.parent().and_then(|p| p.metadata().ok())) else {
        return String::new();
    };
    let owner = user_name(meta.uid());
    let me = current_uid().map(user_name).unwrap_or_else(|| "unknown".into());
    if owner == me {
        return format!(" (owned by {owner}, who is running this, with mode {:o})", meta.mode() & 0o7777);
    }
    format!(" (owned by {owner}; this runs as {me}: run it as {owner}, or give {me} the directory with chown -R)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_uid_0_and_unknown_ids_are_numbers() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "uid 4000000000");
    }

    #[test]
    fn only_permission_errors_get_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let other = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(permission_hint(dir.path(), &other), "");
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let hint = permission_hint(dir.path(), &denied);
        let me = user_name(current_uid().unwrap());
        assert!(hint.contains(&format!("owned by {me}")), "{hint}");
    }
}
