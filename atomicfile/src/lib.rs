//! Atomic file replacement: a temp file in the same directory with its final mode from the
//! start, fsync, rename(2), fsync of the directory. Readers (kubelet, containerd, the engine)
//! see the old file or the new one, never half of one, and a crash leaves no torn file.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` with permission `mode`, atomically. The temp name starts with '.'
/// and ends in `.tmp<pid>`, so no runtime loads it as a CNI config.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    // A leftover from a crashed writer with the same pid would make create_new fail.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        // The mode is set at creation: a secret is never readable by others, not even briefly.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have narrowed the create mode (a binary must end up executable).
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes only when the content differs; returns whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    match fs::read(path) {
        Ok(current) if current == bytes => Ok(false),
        _ => write(path, bytes, mode).map(|()| true),
    }
}

/// Creates `dir` (and parents) if missing, with `mode` on the directories it creates.
pub fn create_dir_all(dir: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<OsString> {
        fs::read_dir(dir)
            .map(|r| r.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn replaces_content_sets_the_mode_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = d.path().join("10-x.conflist");
        write(&p, b"one", 0o600).unwrap_or_else(|e| panic!("{e}"));
        assert!(write_if_changed(&p, b"two", 0o600).unwrap_or(false));
        assert!(
            !write_if_changed(&p, b"two", 0o600).unwrap_or(true),
            "same content: no write"
        );
        assert_eq!(fs::read(&p).unwrap_or_default(), b"two");
        let mode = fs::metadata(&p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        assert_eq!(listing(d.path()).len(), 1, "no temp file left behind");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp_file() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = d.path().join("key");
        write(&p, b"old", 0o600).unwrap_or_else(|e| panic!("{e}"));
        // Renaming a file over a directory fails after the temp file was written.
        let target = d.path().join("sub");
        create_dir_all(&target.join("x"), 0o700).unwrap_or_else(|e| panic!("{e}"));
        assert!(write(&target, b"new", 0o600).is_err());
        assert_eq!(fs::read(&p).unwrap_or_default(), b"old");
        assert_eq!(listing(d.path()).len(), 2, "key and sub only");
        assert!(
            write(Path::new("/"), b"x", 0o600).is_err(),
            "a path without a file name"
        );
    }
}
